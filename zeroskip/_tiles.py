"""2-D tile granularity: compute only the output tiles whose receptive field is active.

Active tiles of all images are gathered into one batch per tile shape (at most four shapes: the
full tiles and the ragged bottom row, right column and corner), convolved in one call per shape,
and written back through a strided view of the output, so no call is made per tile and no index
runs over the whole output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._activity import cell_activity, window_any
from ._geometry import ConvGeometry, Pair
from ._native import scan
from ._rows import active_rows


def default_tile_size(geometry: ConvGeometry) -> Pair:
    """Output tile size for a layer: small enough to skip finely, large enough that the halo
    (input read by two neighbouring tiles) and per-tile bookkeeping stay cheap."""

    def side(stride: int, window: int) -> int:
        halo = max(window - stride, 0)
        tile = 16
        # Grow while the halo makes the gathered patch more than ~25% larger than the tile's share.
        while tile < 64 and halo > 0.25 * tile * stride:
            tile *= 2
        return tile

    height = side(geometry.stride[0], geometry.window[0])
    # Twice as wide as tall: the output is written row by row, and longer rows copy faster.
    width = 2 * side(geometry.stride[1], geometry.window[1])
    return min(height, geometry.out_height), min(width, geometry.out_width)


def activity_cell(geometry: ConvGeometry, tile: Pair) -> Pair:
    """Block size of the activity map: fine enough that rounding tile windows out to whole
    blocks adds little, coarse enough that the map is a small fraction of the input."""
    return tuple(4 if size * stride < 16 else 8 for size, stride in zip(tile, geometry.stride))  # type: ignore[return-value]


def _tile_windows(count: int, tile: int, stride: int, window: int, pad: int, size: int, cell: int, device):
    """Blocks ``[start, end)`` of the activity map under each tile's receptive field, rounded out."""
    first = torch.arange(count, device=device) * (tile * stride) - pad
    last = first + (tile - 1) * stride + window
    starts = first.clamp(0, size) // cell
    ends = (last.clamp(0, size) + cell - 1) // cell
    return starts, ends


def scan_activity(x: torch.Tensor, geometry: ConvGeometry, tile: Pair) -> tuple[torch.Tensor, torch.Tensor]:
    """Which output tiles and which output rows have a non-zero value in their receptive field.

    The native scan (:mod:`zeroskip._native`) answers exactly where it is built; the torch check
    rounds each tile's receptive field out to whole activity cells, so it may find a few more.

    Args:
        x: input ``(B, C, H, W)`` (unpadded: the zero padding is never active).
        tile: output tile ``(th, tw)``.

    Returns:
        Bool tensors ``(B, ceil(H_out / th), ceil(W_out / tw))`` and ``(B, H_out)``.
    """
    with torch.profiler.record_function("zeroskip::scan"):
        scanned = scan(x, geometry, tile)
    if scanned is not None:
        return scanned
    g = geometry
    cell = activity_cell(g, tile)
    cells = cell_activity(x, cell)
    n_i = -(-g.out_height // tile[0])
    n_j = -(-g.out_width // tile[1])
    rs, re = _tile_windows(n_i, tile[0], g.stride[0], g.window[0], g.pad_top, g.height, cell[0], cells.device)
    cs, ce = _tile_windows(n_j, tile[1], g.stride[1], g.window[1], g.pad_left, g.width, cell[1], cells.device)
    return window_any(window_any(cells, 1, rs, re), 2, cs, ce), active_rows(x, g)


# The sampled check scans one row of tiles in this many, and only images this many rows of tiles tall.
_SAMPLE_STEP = 4
_SAMPLE_MIN_TILE_ROWS = 8


def sample_activity(x: torch.Tensor, geometry: ConvGeometry, tile: Pair) -> list[tuple[float, float]] | None:
    """Per image, the fractions of active tiles and of active output rows, estimated by the native
    scan of one row of tiles in :data:`_SAMPLE_STEP`: a quarter of the full check's cost.

    Returns:
        ``(tile_fraction, row_fraction)`` per image, or ``None`` where no sample is taken (no
        native scan, or too few rows of tiles for a sample to say much).
    """
    g = geometry
    n_i = -(-g.out_height // tile[0])
    if n_i < _SAMPLE_MIN_TILE_ROWS:
        return None
    with torch.profiler.record_function("zeroskip::scan"):
        scanned = scan(x, g, tile, _SAMPLE_STEP)
    if scanned is None:
        return None
    tiles, rows = scanned
    sampled = range(0, n_i, _SAMPLE_STEP)
    sampled_rows = sum(min(tile[0], g.out_height - i * tile[0]) for i in sampled)
    tile_fractions = (tiles.sum((1, 2)) / (len(sampled) * tiles.shape[2])).tolist()
    row_fractions = (rows.sum(1) / sampled_rows).tolist()
    return list(zip(tile_fractions, row_fractions))


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
) -> None:
    """Convolve the active tiles of ``x`` and write them into ``out``.

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
                    result = F.conv2d(patches, weight, bias, g.stride, 0, g.dilation, g.groups)
                    for k, (b, i, j) in enumerate(zip(*(t[chosen].tolist() for t in (image, row, column)))):
                        top = (b0 + i) * tile[0]
                        left = (j0 + j) * tile[1]
                        out[images[b], :, top : top + h, left : left + length * w] = result[k]
