"""``report.png`` of a video run: time per batch, sparsity across the clip, and a sample masked frame
with the tiles or rows that zeroskip's first convolution computes drawn on it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._geometry import _pair, check_conv_args
from ._profiler import profile
from .conv import SparseConv2d
from .engine.plan import default_tile_size
from .masking import frames_to_tensor

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class LayerPlan:
    """What a model's first zeroskip convolution does on one frame.

    Attributes:
        chosen: what ran (``"tiles"``, ``"rows"``, ``"dense"``, ``"fill"``).
        boxes: ``(x0, y0, x1, y1)`` frame areas whose outputs were computed, for tiles and rows.
        computed: number of tiles or rows computed.
        total: number of tiles or rows in the output.
    """

    chosen: str
    boxes: list[Box]
    computed: int
    total: int


class _Captured(Exception):
    """Stops a forward pass at the first zeroskip convolution, carrying its module and input."""

    def __init__(self, module: SparseConv2d, x: torch.Tensor) -> None:
        super().__init__()
        self.module, self.x = module, x


def _first_sparse_call(model: nn.Module, x: torch.Tensor) -> tuple[SparseConv2d, torch.Tensor] | None:
    def stop(module: nn.Module, args: tuple) -> None:
        raise _Captured(module, args[0])

    handles = [m.register_forward_pre_hook(stop) for m in model.modules() if isinstance(m, SparseConv2d)]
    try:
        with torch.inference_mode():
            model(x)
    except _Captured as captured:
        return captured.module, captured.x
    finally:
        for handle in handles:
            handle.remove()
    return None


def first_layer_plan(model: nn.Module, frame: np.ndarray) -> LayerPlan | None:
    """Run ``model`` (sparsified) on one ``(H, W, 3)`` uint8 BGR frame up to its first zeroskip
    convolution and return where that convolution computes, in frame pixels.

    Returns:
        The plan, or ``None`` when the model has no zeroskip convolution.
    """
    captured = _first_sparse_call(model, frames_to_tensor([frame]))
    if captured is None:
        return None
    layer, x = captured
    with torch.inference_mode(), profile() as prof:
        layer(x)
    chosen = prof.records[0].chosen
    if chosen not in ("tiles", "rows"):
        return LayerPlan(chosen, [], 0, 0)
    g = check_conv_args(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    # Output pixels whose receptive field (the whole window, as the engine checks it) holds a
    # non-zero value: what any exact skipping scheme must compute.
    nonzero = F.pad((x[:1] != 0).any(1, keepdim=True).float(), (g.pad_left, g.pad_right, g.pad_top, g.pad_bottom))
    active = F.max_pool2d(nonzero, g.window, g.stride)[0, 0] > 0
    if chosen == "tiles":
        tile = _pair(layer.tile_size, "tile_size", minimum=1) if layer.tile_size is not None else default_tile_size(g)
        tile = (min(tile[0], g.out_height), min(tile[1], g.out_width))
    else:
        tile = (1, g.out_width)
    cells = F.max_pool2d(active[None, None].float(), tile, tile, ceil_mode=True)[0, 0] > 0
    # Boxes are drawn on the frame: scale from the layer's input grid, in case it is not the frame's.
    sy, sx = frame.shape[0] / g.height, frame.shape[1] / g.width

    def span(first: int, count: int, size: int, out_size: int, stride: int, pad: int) -> tuple[float, float]:
        # An output range's own share of the input (stride steps), not its whole receptive field,
        # so that neighbouring boxes do not overlap; the last range reaches the input's edge.
        ends = (first * count, min((first + 1) * count, out_size))
        return tuple(size if o == out_size else max(0, min(size, o * stride - pad)) for o in ends)

    boxes = []
    for i, j in cells.nonzero().tolist():
        y0, y1 = span(i, tile[0], g.height, g.out_height, g.stride[0], g.pad_top)
        x0, x1 = span(j, tile[1], g.width, g.out_width, g.stride[1], g.pad_left)
        if chosen == "rows" and boxes and boxes[-1][3] == y0 * sy:
            boxes[-1] = (*boxes[-1][:3], y1 * sy)  # one box per band of consecutive rows
        else:
            boxes.append((x0 * sx, y0 * sy, x1 * sx, y1 * sy))
    return LayerPlan(chosen, boxes, int(cells.sum()), cells.numel())


def _per_batch(axes, batches: Sequence[int], series: Sequence[tuple[str, Sequence[float]]]) -> None:
    """Plot ``(label, values)`` series over ``batches``: lines, or grouped bars for a single batch
    (a line of one point is a lone dot on a meaningless axis)."""
    from matplotlib.ticker import MaxNLocator

    if len(batches) == 1:
        width = 0.8 / len(series)
        for k, (label, values) in enumerate(series):
            bar = axes.bar(batches[0] + (k - (len(series) - 1) / 2) * width, values[0], width, label=label)
            axes.bar_label(bar, fmt=lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}", fontsize=8)
        axes.set_xticks([batches[0]])
    else:
        for label, values in series:
            axes.plot(batches, values, marker="." if len(batches) <= 100 else None, label=label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend()


def _sample_frame(axes, model: nn.Module, sample: np.ndarray, title: str) -> None:
    """Show a masked frame with the tiles or rows that ``model``'s first zeroskip convolution computes."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    axes.imshow(sample[..., ::-1])
    axes.set_axis_off()
    zero = 100.0 * float(np.mean(sample == 0))
    title += f" ({zero:.1f}% zero values)"
    plan = first_layer_plan(model, sample)
    if plan is not None:
        unit = "tiles" if plan.chosen == "tiles" else "rows"
        ran = f"first convolution ran {plan.chosen}"
        if plan.chosen in ("tiles", "rows"):
            ran += f": {plan.computed} of {plan.total} output {unit} computed (outlined)"
        # A long stream name would push the line past the figure's edge.
        title += ";\n" + ran if len(title) + len(ran) > 110 else "; " + ran
        axes.add_collection(
            PatchCollection(
                [Rectangle((x0, y0), x1 - x0, y1 - y0) for x0, y0, x1, y1 in plan.boxes],
                facecolor=(1.0, 0.85, 0.0, 0.15), edgecolor=(1.0, 0.85, 0.0, 0.9), linewidth=0.6,
            )
        )
    axes.set_title(title)


def report_figure(results: Sequence, summary: dict, sample: np.ndarray, sample_index: int, model: nn.Module):
    """The report of a video run as a matplotlib ``Figure`` (see :func:`write_report`)."""
    from matplotlib.figure import Figure

    settings = summary["settings"]
    batches = [r.batch for r in results]
    figure = Figure(figsize=(12, 10), layout="constrained")
    grid = figure.add_gridspec(2, 2, height_ratios=(1, 1.6))
    figure.suptitle(
        f"zeroskip on {summary['totals']['frames']} frames: model {settings['model']}, mode {settings['mode']},"
        f" batch {settings['batch_size']} - speed-up {summary['speedup']:.2f}x,"
        f" max |zeroskip - dense| {summary['max_abs_err']:.2g}"
    )

    times = figure.add_subplot(grid[0, 0])
    _per_batch(
        times, batches,
        [("dense", [1e3 * r.t_orig for r in results]), ("zeroskip", [1e3 * r.t_sparse for r in results])],
    )
    times.set(title="time per batch (same masked input)", xlabel="batch", ylabel="ms", ylim=(0, None))

    sparsity = figure.add_subplot(grid[0, 1])
    series = [("zero input values", [r.sparsity_before for r in results])]
    # Zeros of a classifier's logits say nothing about sparsity: the panel shows feature maps only.
    if all(getattr(r, "spatial", True) for r in results):
        series.append(("zero output values (dense)", [r.sparsity_after for r in results]))
    series.append(("work computed by zeroskip", [100 * r.active_fraction for r in results]))
    _per_batch(sparsity, batches, series)
    sparsity.set(title="sparsity across the video", xlabel="batch", ylabel="%", ylim=(0, 105))

    _sample_frame(figure.add_subplot(grid[1, :]), model, sample, f"most active masked frame, frame {sample_index}")
    return figure


def write_report(
    path: str | os.PathLike,
    results: Sequence,
    summary: dict,
    sample: np.ndarray,
    sample_index: int,
    model: nn.Module,
) -> None:
    """Draw the report of a video run as PNG.

    Args:
        path: where to write the PNG.
        results: the per-batch :class:`zeroskip.video.BatchResult` rows.
        summary: the run's summary (see :func:`zeroskip.video.run`).
        sample: a masked ``(H, W, 3)`` uint8 BGR frame to show (the run's most active one).
        sample_index: its frame number in the clip.
        model: the sparsified model, to find what its first convolution computes on ``sample``.
    """
    report_figure(results, summary, sample, sample_index, model).savefig(path, format="png", dpi=100)


# Up to this many streams, per-stream panels name every stream; beyond, they show sorted bars.
_NAMED_STREAMS = 30


def _per_stream(axes, streams: Sequence[dict], series: Sequence[tuple[str, Sequence[float | None]]], unit: str) -> None:
    """Per-stream bars: horizontal and named for a few streams, sorted by the first series for many."""
    values = [[np.nan if v is None else v for v in vs] for _, vs in series]
    if len(streams) <= _NAMED_STREAMS:
        positions = np.arange(len(streams))
        height = 0.8 / len(series)
        for k, (label, _) in enumerate(series):
            axes.barh(positions + (k - (len(series) - 1) / 2) * height, values[k], height, label=label)
        axes.set_yticks(positions, [s["name"] + (" (failed)" if s["status"] == "failed" else "") for s in streams],
                        fontsize=8 if len(streams) > 12 else 10)
        for tick, stream in zip(axes.get_yticklabels(), streams):
            if stream["status"] == "failed":
                tick.set_color("tab:red")
        axes.invert_yaxis()
        axes.set_xlabel(unit)
    else:
        order = np.argsort([-(-np.inf if np.isnan(v) else v) for v in values[0]], kind="stable")
        for k, (label, _) in enumerate(series):
            axes.bar(np.arange(len(streams)), np.asarray(values[k])[order], 1.0, label=label, alpha=0.8 if k else 1.0)
        axes.set_xlabel(f"{len(streams)} streams, sorted by {series[0][0]}")
        axes.set_ylabel(unit)
    if len(series) > 1:
        if len(streams) <= _NAMED_STREAMS:
            axes.margins(x=0.8)  # room on the right for the legend (bars are stuck to 0 on the left)
        axes.legend(loc="upper right", fontsize=8)


def streams_figure(summary: dict, sample: tuple[str, int, np.ndarray] | None, model: nn.Module):
    """The report of a many-stream run as a matplotlib ``Figure`` (see :func:`write_streams_report`)."""
    from matplotlib.figure import Figure

    settings, totals, streams = summary["settings"], summary["totals"], summary["streams"]
    named = len(streams) <= _NAMED_STREAMS
    stream_height = max(3.0, 0.22 * len(streams)) if named else 3.5
    figure = Figure(figsize=(14, 8 + stream_height), layout="constrained")
    grid = figure.add_gridspec(3, 2, height_ratios=(stream_height, 3.2, 5))
    speedup = f"{summary['speedup']:.2f}x" if summary["speedup"] is not None else "n/a"
    error = f"{summary['max_abs_err']:.2g}" if summary["max_abs_err"] is not None else "n/a"
    title = (
        f"zeroskip on {totals['streams']} streams, {totals['frames']} frames: model {settings['model']},"
        f" mode {settings['mode']}, batch {settings['batch_size']} across streams"
        f"{', Ray: ' + str(settings['workers']) + ' workers' if settings.get('ray') else ''}\n"
        f"{totals['frames_per_s'] or 0:.1f} frames/s in all; model speed-up {speedup}, max |zeroskip - dense| {error}"
    )
    if totals["failed_streams"]:
        title += f"; {totals['failed_streams']} stream(s) FAILED (see summary.json)"
    figure.suptitle(title)

    throughput = figure.add_subplot(grid[0, 0])
    _per_stream(throughput, streams, [("frames/s", [s["frames_per_s"] for s in streams])], "frames/s")
    throughput.set_title("throughput per stream (its frames over the time to its end)")
    activity = figure.add_subplot(grid[0, 1])
    def percent(key: str, complement: bool) -> list[float | None]:
        values = [s[key] for s in streams]
        return [None if v is None else (100 - v if complement else 100 * v) for v in values]

    _per_stream(activity, streams, [
        ("work computed by zeroskip", percent("median_active_fraction", False)),
        ("non-zero input values", percent("median_sparsity_before", True)),
    ], "% (median over the stream's batches)")
    activity.set_title("activity per stream")

    stages = figure.add_subplot(grid[1, 0])
    labels = {
        "decode_s": "decode", "subtract_s": "background subtraction", "wait_for_frames_s": "model waits for frames",
        "model_dense_s": "dense model", "model_zeroskip_s": "zeroskip model", "check_s": "compare outputs",
        "write_s": "write rows", "wall_s": "wall time of the run",
    }
    shown = [(label, summary["stages"][key]) for key, label in labels.items() if summary["stages"].get(key) is not None]
    bars = stages.barh(range(len(shown)), [v for _, v in shown], color=["tab:gray"] * (len(shown) - 1) + ["tab:blue"])
    stages.bar_label(bars, fmt="%.2f s", fontsize=8)
    stages.margins(x=0.15)  # room for the last label
    stages.set_yticks(range(len(shown)), [label for label, _ in shown])
    stages.invert_yaxis()
    stages.set(title="time per stage (decode and subtraction overlap the model: other threads)", xlabel="s")

    times = figure.add_subplot(grid[1, 1])
    batches = summary["batches"]
    series = [(label, [1e3 * b[key] for b in batches]) for key, label in (("t_orig", "dense"), ("t_sparse", "zeroskip"))
              if batches and not np.isnan(batches[0][key])]
    if batches and series:
        _per_batch(times, list(range(len(batches))), series)
    times.set(title="model time per batch (frames of every stream)", xlabel="batch", ylabel="ms", ylim=(0, None))

    frame = figure.add_subplot(grid[2, :])
    if sample is not None:
        name, index, image = sample
        _sample_frame(frame, model, image, f"most active masked frame: stream {name}, frame {index}")
    else:
        frame.set_axis_off()
        frame.set_title("no frame was decoded")
    return figure


def write_streams_report(
    path: str | os.PathLike, summary: dict, sample: tuple[str, int, np.ndarray] | None, model: nn.Module
) -> None:
    """Draw the report of a many-stream run as PNG: throughput and activity per stream, time per
    stage, model time per batch, and the run's most active masked frame.

    Args:
        path: where to write the PNG.
        summary: the run's summary (see :func:`zeroskip.streams.run`).
        sample: ``(stream name, frame number, masked (H, W, 3) uint8 BGR frame)``, or ``None``.
        model: the sparsified model, to find what its first convolution computes on the sample.
    """
    streams_figure(summary, sample, model).savefig(path, format="png", dpi=90)
