"""Row granularity (the original system's): compute only the output rows whose receptive field
holds a non-zero input value, one convolution per band of consecutive active rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._activity import row_activity, window_any
from ._geometry import ConvGeometry

# Inactive gaps this short are computed anyway: one more convolution call costs more than them.
_MERGE_GAP = 2


def active_rows(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """Bool ``(B, H_out)``: whether each output row's receptive field has a non-zero value."""
    g = geometry
    rows = row_activity(x)
    first = torch.arange(g.out_height, device=x.device) * g.stride[0] - g.pad_top
    starts = first.clamp(0, g.height)
    ends = (first + g.window[0]).clamp(0, g.height)
    return window_any(rows, 1, starts, ends)


def row_bands(active: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per image, the ``[start, end)`` bands of active output rows, short gaps merged."""
    bands_per_image = []
    for flags in active.tolist():
        bands: list[tuple[int, int]] = []
        start = None
        for index, flag in enumerate(flags + [False]):
            if flag and start is None:
                if bands and index - bands[-1][1] <= _MERGE_GAP:
                    start = bands.pop()[0]
                else:
                    start = index
            elif not flag and start is not None:
                bands.append((start, index))
                start = None
        bands_per_image.append(bands)
    return bands_per_image


def run_rows(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    geometry: ConvGeometry,
    bands: list[list[tuple[int, int]]],
    images: list[int],
    budget: int,
) -> None:
    """Convolve the given row bands of ``images`` and write them into ``out``.

    Bands are cut so that one convolution's result takes at most ``budget`` bytes (at least a row).
    """
    g = geometry
    most = max(1, budget // (g.out_channels * g.out_width * out.element_size()))
    for b, image_bands in zip(images, bands):
        pieces = [(start, min(start + most, end)) for first, end in image_bands for start in range(first, end, most)]
        for o0, o1 in pieces:
            r0 = o0 * g.stride[0] - g.pad_top
            r1 = (o1 - 1) * g.stride[0] - g.pad_top + g.window[0]
            band = x[b : b + 1, :, max(r0, 0) : min(r1, g.height)]
            top, bottom = max(-r0, 0), max(r1 - g.height, 0)
            if top or bottom or g.pad_left != g.pad_right:
                band = F.pad(band, (g.pad_left, g.pad_right, top, bottom))
                pad_w = 0
            else:
                pad_w = g.pad_left
            result = F.conv2d(band, weight, bias, g.stride, (0, pad_w), g.dilation, g.groups)
            out[b : b + 1, :, o0:o1] = result
