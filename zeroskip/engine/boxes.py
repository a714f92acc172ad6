"""Planning the torch executor's row path: the original system's granularity (output rows whose
receptive field holds a non-zero input value), refined to boxes, one ``F.conv2d`` call each, found
by cutting the active region's bounding box along inactive bands of rows and columns, recursively."""

from __future__ import annotations

import math

import numpy as np
import torch

from .._activity import block_any
from .._geometry import ConvGeometry
from .cost import ImageCosts

Box = tuple[int, int, int, int]  # output rows [o0, o1) x columns [c0, c1)


def _quantum(size: int) -> int:
    """Box sides along an output side of ``size`` are rounded out to multiples of this.

    Every new convolution shape makes oneDNN build and cache a new primitive (time, and memory kept
    after the call); rounded boxes repeat shapes. Small maps (deep layers) have few possible shapes
    anyway, and there a coarse rounding would compute much more than the active region.
    """
    return max(1, min(8, size // 16))


def _round_out(start: int, end: int, size: int) -> tuple[int, int]:
    """``[start, end)`` grown to a multiple of :func:`_quantum`, kept inside ``[0, size)``."""
    quantum = _quantum(size)
    length = min(size, -(-(end - start) // quantum) * quantum)
    start = min(start, size - length)
    return start, start + length


def _runs(flags: np.ndarray, min_gap: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` runs of true ``flags``, with gaps shorter than ``min_gap`` merged."""
    index = np.flatnonzero(flags)
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) > min_gap)
    starts = [int(index[0])] + (index[breaks + 1]).tolist()
    ends = (index[breaks] + 1).tolist() + [int(index[-1]) + 1]
    return list(zip(starts, ends))


def _pieces(grid: np.ndarray, block: tuple[int, int], costs: ImageCosts) -> list[Box]:
    """Recursive XY cut of a bool block map into boxes (in blocks) around its true blocks.

    A box is split along an inactive band of rows (or columns) when the cost model says that the
    two convolutions of the parts cost less than the one of the whole: the band saves its outputs
    but the parts pay a call and an input halo more.
    """
    bh, bw = block

    def min_gap(across: int, halo: float, other_halo: float, length: int) -> int:
        # Blocks of `length` outputs an inactive band needs to be cut out of a box `across` outputs wide.
        if not costs.pixel:
            return sum(grid.shape)  # outputs cost nothing (no output channels): never split
        outputs = halo + costs.call / (costs.pixel * (across + other_halo))
        return max(1, math.ceil(outputs / length))

    boxes = []
    stack = [(0, grid.shape[0], 0, grid.shape[1])]
    while stack:
        r0, r1, c0, c1 = stack.pop()
        rows = _runs(grid[r0:r1, c0:c1].any(1), min_gap((c1 - c0) * bw, *costs.halo, bh))
        if len(rows) > 1:
            stack += [(r0 + a, r0 + b, c0, c1) for a, b in rows]
            continue
        if not rows:
            continue
        r0, r1 = r0 + rows[0][0], r0 + rows[0][1]
        columns = _runs(grid[r0:r1, c0:c1].any(0), min_gap((r1 - r0) * bh, costs.halo[1], costs.halo[0], bw))
        if len(columns) > 1:
            stack += [(r0, r1, c0 + a, c0 + b) for a, b in columns]
            continue
        boxes.append((r0, r1, c0 + columns[0][0], c0 + columns[0][1]))
    return boxes


def row_boxes(
    rows: torch.Tensor, blocks: torch.Tensor, block: tuple[int, int], width: int, costs: ImageCosts
) -> list[list[Box]]:
    """Per image, boxes of output pixels covering every active output.

    Args:
        rows: bool ``(B, H_out)``, the active output rows (exact).
        blocks: bool ``(B, R, J)``: whether block ``(r, j)`` of ``block = (bh, bw)`` output pixels
            holds an active output (an output activity map with ``block = (1, 1)``, or a tile map).
        width: ``W_out``.
        costs: the layer's costs, which decide where a box is worth splitting.

    Returns:
        Per image, ``(o0, o1, c0, c1)`` boxes, sides rounded out (see :func:`_quantum`).
    """
    height = rows.shape[1]
    blocks, block = _coarse(blocks, block)
    bh, bw = block
    boxes = []
    for image_rows, grid in zip(rows.cpu().numpy(), blocks.cpu().numpy()):
        image_boxes = []
        for r0, r1, c0, c1 in _pieces(grid, block, costs):
            # Block rows are coarser than the exact active rows: trim to those.
            active = np.flatnonzero(image_rows[r0 * bh : r1 * bh])
            if active.size:
                o0, o1 = r0 * bh + int(active[0]), r0 * bh + int(active[-1]) + 1
                image_boxes.append((*_round_out(o0, o1, height), *_round_out(c0 * bw, min(c1 * bw, width), width)))
        boxes.append(image_boxes)
    return boxes


# Boxes are cut on maps of at most this many blocks a side: finer ones cost more to cut than the
# outputs they could save (their boxes are rounded out to several outputs anyway).
_MAX_MAP_SIDE = 64


def _coarse(blocks: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """``blocks`` merged into larger blocks until each side has at most :data:`_MAX_MAP_SIDE`."""
    merge = (-(-blocks.shape[1] // _MAX_MAP_SIDE), -(-blocks.shape[2] // _MAX_MAP_SIDE))
    if merge == (1, 1):
        return blocks.bool(), block
    return block_any(blocks, merge), (block[0] * merge[0], block[1] * merge[1])


def box_fraction(boxes: list[Box], geometry: ConvGeometry) -> float:
    """The fraction of an image's output inside its boxes."""
    return sum((o1 - o0) * (c1 - c0) for o0, o1, c0, c1 in boxes) / (geometry.out_height * geometry.out_width)
