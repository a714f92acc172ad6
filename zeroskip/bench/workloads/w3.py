"""W3: every mode on synthetic frames of known density."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..._profiler import profile
from ..frames import pattern_frame
from ..rows import (
    active_fraction,
    conv_args,
    each,
    fill_like_engine,
    first_mismatch,
    ideal_speedup,
    original_layer,
    paths_ran,
    pixel_density,
)
from ..settings import Context
from ..timing import measure

SPARSE_MODES = ("rows", "tiles", "auto")

def run(ctx: Context) -> dict:
    """W3: every mode on synthetic frames of known density, the original layer, batch 1."""
    settings = ctx.settings
    conv = original_layer()
    generator = torch.Generator().manual_seed(3)
    rows = []
    for kind, density in [("blobs", d) for d in settings.densities] + list(settings.patterns):
        rows.append(sweep_row(ctx, f"{kind} {density:.1%}", conv, pattern_frame(settings.sweep_size, kind, density,
                                                                                 generator), pattern=kind,
                              density=density))
    return {"title": f"W3: density sweep, synthetic {settings.sweep_size[1]}x{settings.sweep_size[0]} frames, "
                     "original layer, batch 1", "kind": "sweep", "rows": rows}


def sweep_row(ctx: Context, case: str, conv: nn.Conv2d, x: torch.Tensor, **extra: object) -> dict:
    """Time dense ``F.conv2d`` and every zeroskip mode on ``x`` against each other.

    Returns:
        The row: per-mode times, the best fixed mode, auto's ratios to dense and to the best, speed-up,
        active fractions, ideal speed-up and efficiency (both for auto).
    """
    from ...conv import conv2d

    args = conv_args(conv)
    functions: dict[str, Callable[[torch.Tensor], object]] = {"dense": lambda x: F.conv2d(x, **args)}
    functions.update({mode: functools.partial(conv2d, **args, mode=mode) for mode in SPARSE_MODES})
    fractions, ran, mismatches = {}, {}, []
    for mode in SPARSE_MODES:
        shapes, mismatch = first_mismatch(functions["dense"], functions[mode], [x])
        if mismatch:
            mismatches.append(f"{mode}: {mismatch}")
        with profile() as prof:
            functions[mode](x)
        fractions[mode], ran[mode] = active_fraction(prof.records), paths_ran(prof.records)
    timed = {name: each(function, [x]) for name, function in functions.items()}
    timed["fill"] = each(lambda shape: fill_like_engine(shape, args["bias"]), shapes)
    timings = measure(timed, ctx.settings.repeats, ctx.settings.min_block_s)
    ms = {name: t.median for name, t in timings.items()}
    best = min(("dense",) + SPARSE_MODES[:-1], key=lambda name: ms[name])
    ideal = ideal_speedup(ms["dense"], ms["fill"], fractions["auto"])
    row = {
        "case": case,
        **extra,
        "pixel_density": pixel_density([x]),
        "ms": ms,
        "iqr": {name: [t.q1, t.q3] for name, t in timings.items()},
        "active_fraction": fractions,
        "auto_ran": ran["auto"],
        "best_fixed": best,
        "auto_vs_dense": ms["auto"] / ms["dense"],
        "auto_vs_best": ms["auto"] / ms[best],
        "speedup": ms["dense"] / ms["auto"],
        "ideal_speedup": ideal,
        "efficiency": ms["dense"] / ms["auto"] / ideal,
        "exact": not mismatches,
        "mismatch": "; ".join(mismatches),
    }
    ctx.log(
        f"  {case:<14} " + "  ".join(f"{name} {ms[name]:8.2f}" for name in functions)
        + f" ms  auto ran {ran['auto']}, best fixed {best}{'' if row['exact'] else '  MISMATCH'}"
    )
    return row


