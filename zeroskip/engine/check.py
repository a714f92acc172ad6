"""Stage 1, check: whether a call can skip anything, and where its input is active.

Cheap reasons first (the call's dtype, layout and devices, the layer's cost), then a sample of the
input (dense frames end here), then the full activity check: which output tiles and which output
rows have a non-zero value under their receptive field. The native scan answers in one pass; the
torch check (several reductions) is its fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._activity import cell_activity, row_activity, sampled_density, window_any
from .._geometry import ConvGeometry, Pair
from .cost import ImageCosts, choose, choose_native
from .native import scan, scan_unit

_REDUCED = (torch.bfloat16, torch.float16)
# Without the native scan: above this sampled pixel density an image is treated as dense
# without a full activity check.
_DENSE_SAMPLE_DENSITY = 0.5
# With it, a sampled activity estimate must show dense wins even when lowered by this much.
_SAMPLE_MARGIN = 0.1


def dense_reason(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    """Why this call cannot take a sparse path at all, or ``""`` if it can (weights not checked)."""
    if x.shape[0] == 0 or x.numel() == 0:
        return "empty input"
    if not x.is_floating_point() or x.layout != torch.strided or x.device.type == "meta":
        # Meta tensors have no values to look at.
        return f"unsupported input {x.dtype}/{x.layout}/{x.device.type}"
    if weight.dtype != x.dtype or weight.device != x.device or (
        bias is not None and (bias.dtype != x.dtype or bias.device != x.device)
    ):
        return "mixed dtypes or devices"
    if x.dtype in _REDUCED and x.device.type == "cpu":
        # PyTorch 2.14's CPU kernels for these give wrong values on some geometries (dilated ones; a
        # stride that skips an Inf on a slice of a channels_last input; garbage reads), differently
        # for the whole input than for a slice or a pre-padded patch of it: only the dense call
        # itself returns what dense returns.
        return f"{str(x.dtype).removeprefix('torch.')} on CPU"
    return ""


def parameters_finite(weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether every weight and bias value is finite.

    Checked on every call that skips something and that the native executor does not check as it
    packs the weights (see :attr:`zeroskip.engine.plan.Plan.checks_weights`), not cached: writes
    through ``.data`` leave no trace a cache could see.
    A sum is one vectorised pass; it is non-finite if any term is (or if it overflows, which only
    sends the call to the dense path). The sums are read as Python floats: ``torch.isfinite`` and
    an add on 0-d tensors cost several microseconds each, more than the sum of a small layer.
    """
    total = weight.sum().item() if bias is None else weight.sum().item() + bias.sum().item()
    return math.isfinite(total)


def sampled_reason(
    x: torch.Tensor, g: ConvGeometry, tile: Pair, costs: ImageCosts, native: bool
) -> tuple[str, Sample | None]:
    """Why a sample of the input already shows that no image can beat dense (or ``""``), and the
    sample, which :func:`measure` completes.

    ``native``: the native executor runs the call (its tiles cost what its kernel costs, which on
    layers of few input channels is less than dense even for a dense image)."""
    sample = sample_activity(x, g, tile)
    if sample is None:
        density = sampled_density(x)
        dense = bool((density > _DENSE_SAMPLE_DENSITY).all())
        return (f"sampled density {density.min().item():.2f}" if dense else ""), None
    # The sample can miss activity, and a wrong dense exit costs speed-up: lower it first.
    lowered = [(max(0.0, t - _SAMPLE_MARGIN), max(0.0, r - _SAMPLE_MARGIN)) for t, r in sample.estimates]
    if native:
        # The native path computes active tiles of active rows: at least the smaller of the two.
        dense = all(choose_native(costs, min(t, r))[0] == "dense" for t, r in lowered)
    else:
        dense = all(choose(costs, t, r)[0] == "dense" for t, r in lowered)
    if dense:
        return f"sampled activity {min(t for t, _ in sample.estimates):.2f}", sample
    return "", sample


def active_rows(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """Bool ``(B, H_out)``: whether each output row's receptive field has a non-zero value."""
    g = geometry
    rows = row_activity(x)
    first = torch.arange(g.out_height, device=x.device) * g.stride[0] - g.pad_top
    starts = first.clamp(0, g.height)
    ends = (first + g.window[0]).clamp(0, g.height)
    return window_any(rows, 1, starts, ends)


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


def _torch_activity(x: torch.Tensor, geometry: ConvGeometry, tile: Pair) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`measure` in torch operations: each tile's receptive field is rounded out to whole
    activity cells, so it may find a few more tiles than the native scan (never fewer)."""
    g = geometry
    cell = activity_cell(g, tile)
    cells = cell_activity(x, cell)
    n_i = -(-g.out_height // tile[0])
    n_j = -(-g.out_width // tile[1])
    rs, re = _tile_windows(n_i, tile[0], g.stride[0], g.window[0], g.pad_top, g.height, cell[0], cells.device)
    cs, ce = _tile_windows(n_j, tile[1], g.stride[1], g.window[1], g.pad_left, g.width, cell[1], cells.device)
    return window_any(window_any(cells, 1, rs, re), 2, cs, ce), active_rows(x, g)


# The sampled check scans one unit of rows of tiles (:func:`~zeroskip.engine.native.scan_unit`) in
# this many, where the image is at least this many units tall; a shorter one is scanned whole (a
# sample would be most of it).
_SAMPLE_STEP = 4
_SAMPLE_MIN_UNITS = 8


@dataclass
class Sample:
    """A native scan of one unit of rows of tiles in ``step`` (every one when ``step`` is 1).

    Attributes:
        tiles: bool ``(B, tiles_i, tiles_j)``, the flags of the rows of tiles not scanned ``False``.
        rows: bool ``(B, H_out)``, likewise.
        step: rows of tiles per scanned one.
        estimates: per image, the fractions of active tiles and of active output rows.
    """

    tiles: torch.Tensor
    rows: torch.Tensor
    step: int
    estimates: list[tuple[float, float]]


def sample_activity(x: torch.Tensor, geometry: ConvGeometry, tile: Pair) -> Sample | None:
    """The native scan of one unit of rows of tiles in :data:`_SAMPLE_STEP` (a quarter of the full
    check's cost, which :func:`measure` then completes), or ``None`` without a native scan."""
    g = geometry
    n_i = -(-g.out_height // tile[0])
    unit = scan_unit(tile)
    step = _SAMPLE_STEP if -(-n_i // unit) >= _SAMPLE_MIN_UNITS else 1
    scanned = scan(x, g, tile, step)
    if scanned is None:
        return None
    tiles, rows = scanned
    # Rows of tiles and output rows of the scanned units, each unit's counted at once: this runs on
    # every call, and a count per tile row cost tens of microseconds on tall outputs.
    sampled_tiles = sampled_rows = 0
    for first in range(0, n_i, unit * step):
        last = min(first + unit, n_i)
        sampled_tiles += last - first
        sampled_rows += min(last * tile[0], g.out_height) - first * tile[0]
    # numpy's count of non-zero bytes, per image: the maps are on the CPU, and a sum of bools
    # converts them to integers first.
    estimates = [
        (np.count_nonzero(image_tiles) / (sampled_tiles * tiles.shape[2]), np.count_nonzero(image_rows) / sampled_rows)
        for image_tiles, image_rows in zip(tiles.numpy(), rows.numpy())
    ]
    return Sample(tiles, rows, step, estimates)


# Images per chunk of the torch check: its intermediate results stay small whatever the batch.
_CHUNK_BYTES = 16 << 20


def measure(
    x: torch.Tensor, geometry: ConvGeometry, tile: Pair, sample: Sample | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which output tiles and which output rows have a non-zero value in their receptive field.

    The native scan (:mod:`zeroskip.engine.native`) answers exactly where it is built, in one pass
    with the call's sample (only the rows of tiles it left are scanned); the torch check is its
    fallback.

    Args:
        x: input ``(B, C, H, W)`` (unpadded: the zero padding is never active).
        tile: output tile ``(th, tw)``.
        sample: the call's :func:`sample_activity`, if taken.

    Returns:
        Bool tensors ``(B, ceil(H_out / th), ceil(W_out / tw))`` and ``(B, H_out)``.
    """
    if sample is not None:
        if sample.step == 1:
            return sample.tiles, sample.rows
        completed = scan(x, geometry, tile, sample.step, (sample.tiles, sample.rows))
        if completed is not None:
            return completed
    scanned = scan(x, geometry, tile)
    if scanned is not None:
        return scanned
    # Only the torch check has intermediate results to keep small.
    per_chunk = max(1, _CHUNK_BYTES // max(1, x[0].numel() * x.element_size()))
    starts = range(0, x.shape[0], per_chunk)
    chunks = [_torch_activity(x[start : start + per_chunk], geometry, tile) for start in starts]
    return torch.cat([tiles for tiles, _ in chunks]), torch.cat([rows for _, rows in chunks])
