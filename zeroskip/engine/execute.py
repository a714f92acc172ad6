"""Stage 4, execute: write the output a :class:`~zeroskip.engine.plan.Plan` describes.

The native executor (float32 on the CPU, where it is built) writes every output once in one
parallel pass (``_execute.c``). The torch executor, for every other dtype and device and wherever
the native one is not built, fills the output with the background first, then writes the active
tiles (gathered into one ``F.conv2d`` call per run length, so no call is made per tile and no
index runs over the whole output) or the row boxes (one ``F.conv2d`` call each) over it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .._background import Background
from .._geometry import ConvGeometry, Pair
from ..fusion import Epilogue, finish
from . import native
from .boxes import Box
from .plan import Plan

# Memory a torch-executed call may use beside its output (padded input band, patches, results), as
# a fraction of the output, so that its peak stays close to the dense call's.
_MEMORY_FRACTION = 0.1
_MIN_BUDGET_BYTES = 1 << 20


def _budget(out: torch.Tensor) -> int:
    return max(_MIN_BUDGET_BYTES, int(_MEMORY_FRACTION * out.numel() * out.element_size()))


def _bias_background(bias: torch.Tensor | None, out: torch.Tensor) -> Background:
    values = bias.detach() if bias is not None else out.new_zeros(out.shape[1])
    return Background.constant(values.view(1, -1), (out.shape[2], out.shape[3]))


def execute(
    plan: Plan,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding,
    out: torch.Tensor,
    background: Background | None,
    zeroed: tuple[int, int] = (0, 0),
    epilogue: Epilogue | None = None,
) -> str | None:
    """Write ``out`` as ``plan`` says; returns the plan detail for the profile, or ``None`` where
    the native executor found a weight or bias value that is not finite (``out`` is then not dense's).

    Args:
        x: input ``(B, C, H, W)``.
        padding: the call's ``F.conv2d`` padding argument (for dense images).
        out: output ``(B, C_out, H_out, W_out)``, uninitialised.
        background: values of the skipped outputs (a carried input's, after ``epilogue``);
            ``None``: the bias.
        zeroed: addresses ``[start, end)`` of ``out``'s memory that reads as +0.0 (native plans
            only): the native executor writes no +0.0 background there.
        epilogue: ops folded into every output written (see :mod:`zeroskip.fusion`), or ``None``.
    """
    g = plan.geometry
    field = background
    if field is None:
        field = _bias_background(bias, out)
        field = field if epilogue is None else epilogue.after(field)
    dense = plan.images("dense")
    if plan.native:
        detail = _execute_native(plan, x, weight, bias, out, field, zeroed, epilogue)
        if detail is None:
            return None
    else:
        detail = _execute_torch(plan, x, weight, bias, out, field, epilogue)
    if dense:
        # Images too active to skip anything: dense, over what the executor filled.
        index = torch.tensor(dense, device=x.device)
        out[index] = finish(F.conv2d(x[index], weight, bias, g.stride, padding, g.dilation, g.groups), epilogue)
    return detail + ("" if epilogue is None else " " + epilogue.describe())


def _execute_native(plan: Plan, x, weight, bias, out, field: Background, zeroed: tuple[int, int],
                    epilogue: Epilogue | None) -> str | None:
    g = plan.geometry
    tiles, rows, tile = plan.tiles, plan.rows, plan.tile
    whole_rows = any(path == "rows" for path in plan.paths)
    if whole_rows:
        # The original system's granularity: whole active rows, as one tile as wide as the output.
        tiles, tile = rows.any(1)[:, None, None], (g.out_height, g.out_width)
    skipped = [b for b, path in enumerate(plan.paths) if path in ("fill", "dense")]
    if skipped:
        # Filled only: nothing active, or computed densely afterwards.
        tiles = tiles.clone()
        tiles[skipped] = False
    core = field.core.to(out.dtype).contiguous()
    # The maps are bool on the CPU: read as uint8 in place.
    folded = None if epilogue is None else (*epilogue.coefficients(), epilogue.relu is not None)
    if not native.execute(x, weight, bias, out, g, tiles.view(torch.uint8), tile, rows.view(torch.uint8),
                          (core, field.rows, field.cols), zeroed, folded):
        return None
    limit, asked = native.thread_limit(), torch.get_num_threads()
    # Why a busy machine's call may have run on fewer threads than asked.
    threads = f" short passes on {limit} of {asked} threads (others began late)" if 0 < limit < asked else ""
    if whole_rows:
        return f"native rows={np.count_nonzero((rows & tiles[:, :, 0]).numpy())}{threads}"
    return f"native tiles={np.count_nonzero(tiles.numpy())} tile={tile[0]}x{tile[1]}{threads}"


def _execute_torch(plan: Plan, x, weight, bias, out, field: Background, epilogue: Epilogue | None) -> str:
    g = plan.geometry
    field.fill(out)
    detail = []
    tiled = plan.images("tiles")
    if tiled:
        active = plan.tiles[tiled] if len(tiled) < g.batch else plan.tiles
        chunk = x[tiled] if len(tiled) < g.batch else x
        run_tiles(chunk, weight, bias, out, g, plan.tile, active, tiled, _budget(out), epilogue)
        detail.append(f"tiles={int(active.sum())} tile={plan.tile[0]}x{plan.tile[1]}")
    boxed = plan.images("rows")
    if boxed:
        boxes = [plan.boxes[b] for b in boxed]
        run_rows(x, weight, bias, out, g, boxes, boxed, _budget(out), epilogue)
        detail.append(f"boxes={sum(len(b) for b in boxes)}")
    return " ".join(detail)


def _shape_groups(size: int, tile: int) -> list[tuple[int, int, int]]:
    """(first tile index, tile count, tile extent) for the full tiles and the ragged last one."""
    full, rest = divmod(size, tile)
    groups = [(0, full, tile)] if full else []
    if rest:
        groups.append((full, 1, rest))
    return groups


def _runs(active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Horizontal runs of consecutive active tiles: (image, tile row, first tile column, length)."""
    image, row, column = active.nonzero(as_tuple=True)
    index = torch.arange(image.numel(), device=active.device)
    starts = torch.ones_like(image, dtype=torch.bool)
    starts[1:] = (image[1:] != image[:-1]) | (row[1:] != row[:-1]) | (column[1:] != column[:-1] + 1)
    first = index[starts]
    lengths = torch.diff(first, append=first.new_tensor([image.numel()]))
    return image[first], row[first], column[first], lengths


def _band_buffer(x: torch.Tensor, rows: int, geometry: ConvGeometry) -> torch.Tensor:
    """Buffer for :func:`_pad_band`: ``rows`` padded input rows of every image of ``x``.

    The left and right padding columns are zeroed once; bands only overwrite the columns between.
    """
    g = geometry
    buffer = x.new_empty(x.shape[0], x.shape[1], rows, g.width + g.pad_left + g.pad_right)
    buffer[..., : g.pad_left].zero_()
    buffer[..., g.pad_left + g.width :].zero_()
    return buffer


def _pad_band(buffer: torch.Tensor, x: torch.Tensor, top: int, rows: int, geometry: ConvGeometry) -> torch.Tensor:
    """Padded input rows ``[top, top + rows)`` (input coordinates; may reach into the padding)."""
    g = geometry
    band = buffer[:, :, :rows]
    first, last = max(top, 0), min(top + rows, g.height)
    if first > top:
        band[:, :, : first - top].zero_()
    if last < top + rows:
        band[:, :, max(last - top, 0) :].zero_()
    if first < last:
        band[:, :, first - top : last - top, g.pad_left : g.pad_left + g.width] = x[:, :, first:last]
    return band


def run_tiles(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    geometry: ConvGeometry,
    tile: Pair,
    active: torch.Tensor,
    images: list[int],
    budget: int,
    epilogue: Epilogue | None = None,
) -> None:
    """Convolve the active tiles of ``x`` and write them into ``out`` (after ``epilogue``, if any).

    The input is padded one band of tile rows at a time, and only bands holding an active tile are
    copied, so the extra memory stays within ``budget`` bytes (at least one tile row) whatever the
    batch. Within a band, horizontally adjacent active tiles are merged into runs: a run's patch is
    read once (no halo read twice), convolved in one call with every run of the same length, and
    written back with one slice copy whose rows are as long as the run.

    Args:
        x: input ``(n, C, H, W)``.
        out: output ``(B, C_out, H_out, W_out)``; tiles not active are left untouched.
        active: bool ``(n, n_i, n_j)`` map of the tiles to compute.
        images: batch index in ``out`` of each image of ``x``.
        budget: bytes the padded band may take.
    """
    g = geometry
    step_h, step_w = tile[0] * g.stride[0], tile[1] * g.stride[1]
    row_bytes = x.shape[0] * x.shape[1] * (g.width + g.pad_left + g.pad_right) * x.element_size()
    band_tiles = max(1, budget // (row_bytes * step_h))
    buffer = None
    for i0, n_i, h in _shape_groups(g.out_height, tile[0]):
        patch_h = (h - 1) * g.stride[0] + g.window[0]
        for b0 in range(i0, i0 + n_i, band_tiles):
            b1 = min(b0 + band_tiles, i0 + n_i)
            band_active = active[:, b0:b1]
            if not bool(band_active.any()):
                continue
            rows = (b1 - b0 - 1) * step_h + patch_h
            if buffer is None:
                buffer = _band_buffer(x, (min(band_tiles, n_i) - 1) * step_h + patch_h, g)
            band = _pad_band(buffer, x, b0 * step_h - g.pad_top, rows, g)
            sb, sc, sh, sw = band.stride()
            for j0, n_j, w in _shape_groups(g.out_width, tile[1]):
                image, row, column, lengths = _runs(band_active[:, :, j0 : j0 + n_j])
                for length in lengths.unique().tolist():
                    chosen = (lengths == length).nonzero(as_tuple=True)[0]
                    patch_w = (length * w - 1) * g.stride[1] + g.window[1]
                    patches = band.as_strided(
                        (band.shape[0], b1 - b0, n_j - length + 1, band.shape[1], patch_h, patch_w),
                        (sb, step_h * sh, step_w * sw, sc, sh, sw),
                        band.storage_offset() + j0 * step_w * sw,
                    )[image[chosen], row[chosen], column[chosen]]
                    result = finish(F.conv2d(patches, weight, bias, g.stride, 0, g.dilation, g.groups), epilogue)
                    for k, (b, i, j) in enumerate(zip(*(t[chosen].tolist() for t in (image, row, column)))):
                        top = (b0 + i) * tile[0]
                        left = (j0 + j) * tile[1]
                        out[images[b], :, top : top + h, left : left + length * w] = result[k]


def run_rows(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    geometry: ConvGeometry,
    boxes: list[list[Box]],
    images: list[int],
    budget: int,
    epilogue: Epilogue | None = None,
) -> None:
    """Convolve the given boxes of ``images`` and write them into ``out`` (after ``epilogue``, if any).

    Boxes are cut so that one convolution's result takes at most ``budget`` bytes (at least a row).
    """
    g = geometry
    for b, image_boxes in zip(images, boxes):
        for box0, box1, c0, c1 in image_boxes:
            most = max(1, budget // (g.out_channels * (c1 - c0) * out.element_size()))
            for o0 in range(box0, box1, most):
                o1 = min(o0 + most, box1)
                r0 = o0 * g.stride[0] - g.pad_top
                r1 = (o1 - 1) * g.stride[0] - g.pad_top + g.window[0]
                w0 = c0 * g.stride[1] - g.pad_left
                w1 = (c1 - 1) * g.stride[1] - g.pad_left + g.window[1]
                band = x[b : b + 1, :, max(r0, 0) : min(r1, g.height), max(w0, 0) : min(w1, g.width)]
                top, bottom = max(-r0, 0), max(r1 - g.height, 0)
                left, right = max(-w0, 0), max(w1 - g.width, 0)
                if top or bottom or left != right:
                    band = F.pad(band, (left, right, top, bottom))
                    left = 0
                result = F.conv2d(band, weight, bias, g.stride, (0, left), g.dilation, g.groups)
                out[b : b + 1, :, o0:o1, c0:c1] = finish(result, epilogue)
