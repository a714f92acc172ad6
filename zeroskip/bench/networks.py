"""Whole networks: :func:`network_row` compares a dense model with its sparsified twin; stages of a network."""

from __future__ import annotations

import itertools
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch
import torch.nn as nn

from .._profiler import CallRecord, profile
from .rows import paths_ran, pixel_density
from .settings import Context
from .timing import measure


def stages(names: Sequence[str]) -> dict[str, str]:
    """Stage of each qualified convolution name: its top-level block, or the block below a
    container that holds most of the network (``features.3`` in MobileNet, ``backbone.layer2`` in FCN)."""
    stage = {name: name.split(".")[0] for name in names}
    for depth in (2, 3):
        crowded = {s for s, n in Counter(stage.values()).items() if n > len(stage) / 2}
        if not crowded:
            break
        stage = {name: ".".join(name.split(".")[:depth]) if stage[name] in crowded else stage[name] for name in names}
    return stage


def stage_fractions(records: Sequence[CallRecord]) -> dict[str, float]:
    """Mean active fraction of the convolutions of each stage (:func:`stages`), in network order."""
    stage_of = stages([r.name or "-" for r in records])
    groups: dict[str, list[float]] = defaultdict(list)
    for record in records:
        groups[stage_of[record.name or "-"]].append(record.active_fraction)
    return {stage: statistics.fmean(values) for stage, values in groups.items()}


def _cycling(model: nn.Module, inputs: Sequence[torch.Tensor]) -> Callable[[], None]:
    """One benchmark call: ``model`` on the next of ``inputs`` (in turn, round and round)."""
    cycle = itertools.cycle(inputs)

    def run() -> None:
        model(next(cycle))

    return run


def network_row(ctx: Context, case: str, model: str, dense: nn.Module, sparse: nn.Module,
                inputs: Sequence[torch.Tensor], **extra: object) -> dict:
    """Compare the dense ``model`` with its :func:`zeroskip.sparsify_` twin ``sparse`` on ``inputs``.

    First every input runs through both, untimed: the outputs (every tensor of them) must agree
    within ``torch.testing.assert_close``'s float32 tolerances with the absolute one scaled by the
    output's largest magnitude (as ``zeroskip video`` checks), and the sparse runs are profiled for
    the active fractions. Then :func:`measure` alternates timed blocks of both, each call running
    the next input in turn.

    Returns:
        The row: times with spread, speed-up, the fraction of the dense convolution work computed
        (``active_fraction``, multiply-accumulate weighted), the mean active fraction per stage
        (``stages``) and per convolution of the first input (``layers``), the largest difference
        relative to the largest output (``max_error``) and the check's verdict.
    """
    from ..video import _tensors, assert_outputs_agree, work_fraction

    records: list[CallRecord] = []
    first_records: list[CallRecord] = []
    error, mismatch = 0.0, ""
    with torch.inference_mode():
        for index, x in enumerate(inputs):
            expected = dense(x)
            with profile() as prof:
                actual = sparse(x)
            records += prof.records
            first_records = first_records or prof.records
            for a, e in zip(_tensors(actual), _tensors(expected)):
                if e.numel():
                    error = max(error, float((a - e).abs().max()) / (float(e.abs().max()) or 1.0))
            try:
                assert_outputs_agree(actual, expected)
            except AssertionError as failure:
                mismatch = mismatch or f"input {index}: " + " ".join(str(failure).split())[:300]
        # Each block runs the next input: equal counts of every input, or one frame's cost would weigh more.
        repeats = -(-ctx.settings.network_repeats // len(inputs)) * len(inputs)
        timings = measure({"dense": _cycling(dense, inputs), "zeroskip": _cycling(sparse, inputs)},
                          repeats, ctx.settings.min_block_s)
    dense_t, sparse_t = timings["dense"], timings["zeroskip"]
    row = {
        "case": case,
        "model": model,
        **extra,
        "batch": int(inputs[0].shape[0]),
        "input_shape": list(inputs[0].shape),
        "frames": len(inputs),
        "pixel_density": pixel_density(inputs),
        "dense_ms": dense_t.median,
        "dense_iqr": [dense_t.q1, dense_t.q3],
        "zeroskip_ms": sparse_t.median,
        "zeroskip_iqr": [sparse_t.q1, sparse_t.q3],
        "speedup": dense_t.median / sparse_t.median,
        "active_fraction": work_fraction(records, sparse),
        "stages": stage_fractions(records),
        "layers": [[r.name, r.chosen, r.active_fraction] for r in first_records],
        "ran": paths_ran(records),
        "max_error": error,
        "exact": not mismatch,
        "mismatch": mismatch,
        "timings": {name: asdict(t) for name, t in timings.items()},
    }
    ctx.log(
        f"  {case:<32} dense {row['dense_ms']:9.2f} ms  zeroskip {row['zeroskip_ms']:9.2f} ms  {row['speedup']:6.2f}x"
        f"  work {row['active_fraction']:6.1%}  stages {stage_cell(row['stages'])}"
        + ("" if row["exact"] else "  MISMATCH")
    )
    return row


def stage_cell(stages_: dict[str, float]) -> str:
    """``conv1 6%, layer1 14%, ...``, without a prefix that every stage shares (``features.``)."""
    names = list(stages_)
    prefix = os.path.commonprefix(names)
    prefix = prefix[: prefix.rfind(".") + 1] if len(names) > 1 else ""
    return ", ".join(f"{name[len(prefix):]} {fraction:.0%}" for name, fraction in stages_.items())
