"""Building blocks of the workloads: seeded layers, exactness checks, and :func:`speed_row`, one single-layer
comparison of dense ``F.conv2d`` with zeroskip."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._profiler import CallRecord, profile
from .settings import Context
from .timing import measure


def pixel_density(inputs: Sequence[torch.Tensor]) -> float:
    return statistics.fmean(float(x.ne(0).any(1).float().mean()) for x in inputs)


def seeded_layer(in_channels: int, out_channels: int, kernel: int, seed: int, **options: object) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(in_channels, out_channels, kernel, **options).requires_grad_(False)


def original_layer() -> nn.Conv2d:
    """The original experiment's layer, ``Conv2d(3, 64, 7, stride=2, padding=3, bias=False)``, seeded."""
    return seeded_layer(3, 64, 7, seed=0, stride=2, padding=3, bias=False)




def conv_args(conv: nn.Conv2d) -> dict[str, object]:
    return {
        "weight": conv.weight, "bias": conv.bias, "stride": conv.stride, "padding": conv.padding,
        "dilation": conv.dilation, "groups": conv.groups,
    }


def each(function: Callable[[Any], object], inputs: Sequence[Any]) -> Callable[[], None]:
    """One benchmark call: ``function`` on every input in turn, each output dropped at once."""

    def run() -> None:
        for x in inputs:
            function(x)

    return run


def fill_like_engine(shape: torch.Size, bias: torch.Tensor | None) -> torch.Tensor:
    out = torch.empty(shape)
    return out.zero_() if bias is None else out.copy_(bias.view(1, -1, 1, 1).expand(shape))


def first_mismatch(dense: Callable[[torch.Tensor], torch.Tensor], sparse: Callable[[torch.Tensor], torch.Tensor],
              inputs: Sequence[torch.Tensor]) -> tuple[list[torch.Size], str]:
    """Output shapes, and ``""`` if ``sparse`` equals ``dense`` on every input, else the first difference."""
    shapes = []
    for index, x in enumerate(inputs):
        expected = dense(x)
        shapes.append(expected.shape)
        try:
            torch.testing.assert_close(sparse(x), expected)
        except AssertionError as error:
            return shapes, f"input {index}: " + " ".join(str(error).split())[:300]
    return shapes, ""


def active_fraction(records: Sequence[CallRecord]) -> float:
    """The fraction of outputs computed over ``records``, each call weighted by its batch size."""
    weights = [record.input_shape[0] if len(record.input_shape) == 4 else 1 for record in records]
    return sum(w * r.active_fraction for w, r in zip(weights, records)) / max(1, sum(weights))


def paths_ran(records: Sequence[CallRecord]) -> str:
    counts = Counter(record.chosen for record in records)
    return ", ".join(f"{path}" + (f" x{n}" if n > 1 else "") for path, n in counts.most_common())


def ideal_speedup(dense_ms: float, fill_ms: float, fraction: float) -> float:
    return dense_ms / (fill_ms + fraction * dense_ms)


def speed_row(ctx: Context, case: str, conv: nn.Conv2d, inputs: Sequence[torch.Tensor], **extra: object) -> dict:
    """Compare dense ``F.conv2d`` with ``zeroskip.conv2d`` (``mode="auto"``) running ``conv`` on ``inputs``.

    One call is one pass over ``inputs`` (several batch-1 frames, or one batch); the times are per
    input tensor. Checks that both agree before timing, and queues the case for peak memory.

    Returns:
        The row: times with spread, speed-up, active fraction, fill time, ideal speed-up, efficiency.
    """
    from ..conv import conv2d

    args = conv_args(conv)
    dense = lambda x: F.conv2d(x, **args)  # noqa: E731
    sparse = lambda x: conv2d(x, **args)  # noqa: E731
    shapes, mismatch = first_mismatch(dense, sparse, inputs)
    with profile() as prof:
        each(sparse, inputs)()
    timings = measure(
        {
            "dense": each(dense, inputs),
            "zeroskip": each(sparse, inputs),
            "fill": each(lambda shape: fill_like_engine(shape, args["bias"]), shapes),
        },
        ctx.settings.repeats, ctx.settings.min_block_s,
    )
    n = len(inputs)
    dense_ms, sparse_ms, fill_ms = (timings[k].median / n for k in ("dense", "zeroskip", "fill"))
    fraction = active_fraction(prof.records)
    ideal = ideal_speedup(dense_ms, fill_ms, fraction)
    row = {
        "case": case,
        "batch": int(inputs[0].shape[0]),
        "input_shape": list(inputs[0].shape),
        "layer": _describe(conv),
        **extra,
        "pixel_density": pixel_density(inputs),
        "dense_ms": dense_ms,
        "dense_iqr": [timings["dense"].q1 / n, timings["dense"].q3 / n],
        "zeroskip_ms": sparse_ms,
        "zeroskip_iqr": [timings["zeroskip"].q1 / n, timings["zeroskip"].q3 / n],
        "fill_ms": fill_ms,
        "speedup": dense_ms / sparse_ms,
        "active_fraction": fraction,
        "ideal_speedup": ideal,
        "efficiency": dense_ms / sparse_ms / ideal,
        "ran": paths_ran(prof.records),
        "exact": not mismatch,
        "mismatch": mismatch,
        "timings": {name: asdict(t) for name, t in timings.items()},
    }
    # One call, not the pass over every frame: after timing, glibc's heap holds large free chunks
    # that serve such blocks whatever the mmap threshold, and calls in a row that take different
    # chunks each fault in pages the others left, which read as two or three outputs' worth
    # (W1: 82 MB against 28 in one of two fresh runs of the suite).
    ctx.queue_memory(row, each(dense, inputs[:1]), each(sparse, inputs[:1]))
    ctx.log(
        f"  {case:<28} dense {dense_ms:9.2f} ms  zeroskip {sparse_ms:9.2f} ms  {row['speedup']:6.2f}x"
        f"  active {fraction:6.1%}  efficiency {row['efficiency']:.2f}{'' if row['exact'] else '  MISMATCH'}"
    )
    return row


def _describe(conv: nn.Conv2d) -> str:
    text = f"Conv2d({conv.in_channels}, {conv.out_channels}, {conv.kernel_size[0]}, stride={conv.stride[0]}"
    text += f", padding={conv.padding[0]}"
    if conv.dilation != (1, 1):
        text += f", dilation={conv.dilation[0]}"
    if conv.groups != 1:
        text += f", groups={conv.groups}"
    return text + f", bias={conv.bias is not None})"


def batched(frames: torch.Tensor, batch: int, count: int) -> list[torch.Tensor]:
    """Batch 1: each of the first ``count`` frames in turn; larger batches: the first ``batch`` frames."""
    if batch == 1:
        return [frame.unsqueeze(0) for frame in frames[:count]]
    return [frames[:batch].contiguous()]



