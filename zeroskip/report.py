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
        sample: a masked ``(H, W, 3)`` uint8 BGR frame to show.
        sample_index: its frame number in the clip.
        model: the sparsified model, to find what its first convolution computes on ``sample``.
    """
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

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
    times.plot(batches, [1e3 * r.t_orig for r in results], marker=".", label="dense")
    times.plot(batches, [1e3 * r.t_sparse for r in results], marker=".", label="zeroskip")
    times.set(title="time per batch (same masked input)", xlabel="batch", ylabel="ms", ylim=(0, None))
    times.legend()
    times.xaxis.set_major_locator(MaxNLocator(integer=True))

    sparsity = figure.add_subplot(grid[0, 1])
    sparsity.plot(batches, [r.sparsity_before for r in results], marker=".", label="zero input values")
    sparsity.plot(batches, [r.sparsity_after for r in results], marker=".", label="zero output values (dense)")
    sparsity.plot(batches, [100 * r.active_fraction for r in results], marker=".", label="work computed by zeroskip")
    sparsity.set(title="sparsity across the video", xlabel="batch", ylabel="%", ylim=(0, 100))
    sparsity.legend()
    sparsity.xaxis.set_major_locator(MaxNLocator(integer=True))

    frame = figure.add_subplot(grid[1, :])
    frame.imshow(sample[..., ::-1])
    frame.set_axis_off()
    zero = 100.0 * float(np.mean(sample == 0))
    title = f"masked frame {sample_index} ({zero:.1f}% zero values)"
    plan = first_layer_plan(model, sample)
    if plan is not None:
        unit = "tiles" if plan.chosen == "tiles" else "rows"
        title += f"; first convolution ran {plan.chosen}"
        if plan.chosen in ("tiles", "rows"):
            title += f": {plan.computed} of {plan.total} output {unit} computed (outlined)"
        frame.add_collection(
            PatchCollection(
                [Rectangle((x0, y0), x1 - x0, y1 - y0) for x0, y0, x1, y1 in plan.boxes],
                facecolor=(1.0, 0.85, 0.0, 0.15), edgecolor=(1.0, 0.85, 0.0, 0.9), linewidth=0.6,
            )
        )
    frame.set_title(title)
    figure.savefig(path, format="png", dpi=100)
