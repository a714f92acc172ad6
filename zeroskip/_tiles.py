"""2-D tile granularity: compute only the output tiles whose receptive field is active.

Active tiles of all images are gathered into one batch per tile shape (at most four shapes: the
full tiles and the ragged bottom row, right column and corner), convolved in one call per shape,
and written back through a strided view of the output, so no call is made per tile and no index
runs over the whole output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._activity import cell_activity, window_any
from ._geometry import ConvGeometry, Pair


def default_tile_size(geometry: ConvGeometry) -> Pair:
    """Output tile size for a layer: small enough to skip finely, large enough that the halo
    (input read by two neighbouring tiles) and per-tile bookkeeping stay cheap."""

    def side(out_size: int, stride: int, window: int) -> int:
        halo = max(window - stride, 0)
        tile = 8
        # Grow while the halo makes the gathered patch more than ~50% larger than the tile's share.
        while tile < 32 and halo > 0.5 * tile * stride:
            tile *= 2
        return max(1, min(tile, out_size))

    return (
        side(geometry.out_height, geometry.stride[0], geometry.window[0]),
        side(geometry.out_width, geometry.stride[1], geometry.window[1]),
    )


def _cell(tile_input_stride: int) -> int:
    # Cells must tile the padded input so that each tile's window starts on a cell boundary.
    return math.gcd(tile_input_stride, 8)


def padding_cell(geometry: ConvGeometry, tile: Pair) -> Pair:
    """Cell size of the activity map: it divides the tile step, so tile windows start on cells."""
    return (_cell(tile[0] * geometry.stride[0]), _cell(tile[1] * geometry.stride[1]))


def new_padded_buffer(x: torch.Tensor, images: int, geometry: ConvGeometry, cell: Pair) -> torch.Tensor:
    """Buffer for :func:`pad_into`: the padded input, plus zeros up to a whole number of cells.

    Only the border is zeroed here; :func:`pad_into` overwrites the interior, so one buffer
    serves every chunk of a batch.
    """
    g = geometry
    height = g.height + g.pad_top + g.pad_bottom
    width = g.width + g.pad_left + g.pad_right
    buffer = x.new_empty(images, x.shape[1], height + -height % cell[0], width + -width % cell[1])
    bottom, right = g.pad_top + g.height, g.pad_left + g.width
    buffer[:, :, : g.pad_top].zero_()
    buffer[:, :, bottom:].zero_()
    buffer[:, :, g.pad_top : bottom, : g.pad_left].zero_()
    buffer[:, :, g.pad_top : bottom, right:].zero_()
    return buffer


def pad_into(buffer: torch.Tensor, x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """Copy ``x`` ``(n, C, H, W)`` into the interior of ``buffer`` and return the ``n`` padded images."""
    g = geometry
    padded = buffer[: x.shape[0]]
    padded[:, :, g.pad_top : g.pad_top + g.height, g.pad_left : g.pad_left + g.width] = x
    return padded


def _tile_windows(count: int, tile: int, stride: int, window: int, cell: int, n_cells: int, device):
    first = torch.arange(count, device=device) * (tile * stride)
    starts = first // cell
    ends = torch.clamp((first + (tile - 1) * stride + window + cell - 1) // cell, max=n_cells)
    return starts, ends


def active_tiles(padded: torch.Tensor, cell: Pair, geometry: ConvGeometry, tile: Pair) -> torch.Tensor:
    """Which output tiles have a non-zero value in their receptive field.

    Args:
        padded: output of :func:`pad_into`, shape ``(B, C, Hq, Wq)``.
        cell: from :func:`padding_cell`.

    Returns:
        Bool tensor ``(B, ceil(H_out / th), ceil(W_out / tw))``.
    """
    g = geometry
    cells = cell_activity(padded, cell)
    n_i = -(-g.out_height // tile[0])
    n_j = -(-g.out_width // tile[1])
    rs, re = _tile_windows(n_i, tile[0], g.stride[0], g.window[0], cell[0], cells.shape[1], cells.device)
    cs, ce = _tile_windows(n_j, tile[1], g.stride[1], g.window[1], cell[1], cells.shape[2], cells.device)
    return window_any(window_any(cells, 1, rs, re), 2, cs, ce)


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


def run_tiles(
    padded: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    geometry: ConvGeometry,
    tile: Pair,
    active: torch.Tensor,
) -> None:
    """Convolve the active tiles and write them into ``out``.

    Horizontally adjacent active tiles are merged into runs: a run's patch is read once (no halo
    read twice), convolved in one call with all runs of the same length, and written back with
    one slice copy, whose rows are as long as the run.

    Args:
        padded: padded input ``(B, C, Hq, Wq)`` from :func:`pad_into`.
        out: output ``(B, C_out, H_out, W_out)``; tiles not active are left untouched.
        active: bool ``(B, n_i, n_j)`` map of the tiles to compute.
    """
    g = geometry
    sb, sc, sh, sw = padded.stride()
    step_h, step_w = tile[0] * g.stride[0], tile[1] * g.stride[1]
    for i0, n_i, h in _shape_groups(g.out_height, tile[0]):
        for j0, n_j, w in _shape_groups(g.out_width, tile[1]):
            image, row, column, lengths = _runs(active[:, i0 : i0 + n_i, j0 : j0 + n_j])
            if image.numel() == 0:
                continue
            patch_h = (h - 1) * g.stride[0] + g.window[0]
            for length in lengths.unique().tolist():
                chosen = (lengths == length).nonzero(as_tuple=True)[0]
                patch_w = (length * w - 1) * g.stride[1] + g.window[1]
                patches = padded.as_strided(
                    (padded.shape[0], n_i, n_j - length + 1, padded.shape[1], patch_h, patch_w),
                    (sb, step_h * sh, step_w * sw, sc, sh, sw),
                    padded.storage_offset() + i0 * step_h * sh + j0 * step_w * sw,
                )[image[chosen], row[chosen], column[chosen]]
                result = F.conv2d(patches, weight, bias, g.stride, 0, g.dilation, g.groups)
                for k, (b, i, j) in enumerate(zip(*(t[chosen].tolist() for t in (image, row, column)))):
                    top = (i0 + i) * tile[0]
                    left = (j0 + j) * tile[1]
                    out[b, :, top : top + h, left : left + length * w] = result[k]
