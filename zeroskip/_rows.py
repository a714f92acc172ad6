"""Row granularity (the original system's): compute only the output rows whose receptive field
holds a non-zero input value, one convolution per band of consecutive active rows, each band
cropped to the columns that hold its active outputs (a box)."""

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


Box = tuple[int, int, int, int]  # output rows [o0, o1) x columns [c0, c1)


# Box sides are rounded out to multiples of this: every new convolution shape makes oneDNN build and
# cache a new primitive (time, and memory kept after the call), and rounded boxes repeat shapes.
_BOX_QUANTUM = 8


def _round_out(start: int, end: int, size: int) -> tuple[int, int]:
    """``[start, end)`` grown to a multiple of :data:`_BOX_QUANTUM`, kept inside ``[0, size)``."""
    length = min(size, -(-(end - start) // _BOX_QUANTUM) * _BOX_QUANTUM)
    start = min(start, size - length)
    return start, start + length


def row_boxes(rows: torch.Tensor, columns: torch.Tensor, block: tuple[int, int], width: int) -> list[list[Box]]:
    """Per image, the bands of active output rows, each cropped to its active columns.

    Args:
        rows: bool ``(B, H_out)``, the active output rows.
        columns: bool ``(B, R, J)``: whether block ``(r, j)`` of ``block = (bh, bw)`` output pixels
            holds an active output (an output activity map with ``block = (1, 1)``, or a tile map).
        width: ``W_out``.

    Returns:
        Per image, ``(o0, o1, c0, c1)`` boxes covering every active output.
    """
    boxes = []
    height = rows.shape[1]
    for image, bands in zip(columns, row_bands(rows)):
        image_boxes = []
        for o0, o1 in bands:
            active = image[o0 // block[0] : (o1 - 1) // block[0] + 1].any(0).nonzero().flatten().tolist()
            if active:
                c0, c1 = active[0] * block[1], min((active[-1] + 1) * block[1], width)
                image_boxes.append((*_round_out(o0, o1, height), *_round_out(c0, c1, width)))
        boxes.append(image_boxes)
    return boxes


def box_fraction(boxes: list[Box], geometry: ConvGeometry) -> float:
    """The fraction of an image's output inside its boxes."""
    return sum((o1 - o0) * (c1 - c0) for o0, o1, c0, c1 in boxes) / (geometry.out_height * geometry.out_width)


def run_rows(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    geometry: ConvGeometry,
    boxes: list[list[Box]],
    images: list[int],
    budget: int,
) -> None:
    """Convolve the given boxes of ``images`` and write them into ``out``.

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
                out[b : b + 1, :, o0:o1, c0:c1] = result
