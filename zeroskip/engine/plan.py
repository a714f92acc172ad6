"""Stage 2, plan: per image, what to compute (fill, tiles, rows or dense), handed to an executor.

One :class:`Plan` describes a call for both executors. The native executor computes, in one pass,
the active tiles of every active output row (``tiles`` and ``rows``); in ``"rows"`` mode every
active row whole, the original system's granularity. The torch executor computes the same tiles
with ``F.conv2d`` on gathered patches, or the row ``boxes`` with one ``F.conv2d`` each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._activity import block_any
from .._geometry import ConvGeometry, Pair
from . import native
from .boxes import Box, box_fraction, row_boxes
from .cost import ImageCosts, choose, choose_native

# Tiles of the native executor: one output pixel. Its vectors then begin where the active columns
# do, not where a tile grid does, and one vector covers the gap between two runs that it reaches
# (engine/_execute.c's run_start): on resnet18 over masked vtest frames 18% fewer vectors than 1 x 16
# tiles (29% on the stem). The native scan finds them in the same one pass over the input. Measured
# alternating in one process against 1 x 16 tiles: resnet18 at 1920x1080 603 -> 519 ms per frame at
# 1 thread, 389 -> 312 ms at 2 (768x576: within noise); the stem on masked vtest frames 6.02 -> 5.38
# ms at 1 thread, 3.28 -> 2.70 ms at 2.
_NATIVE_TILE = (1, 1)


def default_tile_size(geometry: ConvGeometry, carried: bool = False, native: bool = False) -> Pair:
    """Output tile size for a layer: small enough to skip finely, large enough that the halo
    (input read by two neighbouring tiles) and per-tile bookkeeping stay cheap.

    The native executor's tiles are :data:`_NATIVE_TILE`. For the torch executor, a carried input's
    activity costs nothing to know, so its tiles are finer than those of a checked one (which also
    amortise measuring it): 8 x 16 output pixels, measured best on ResNet layers at 5-30% activity
    (kernels without halo keep the larger tiles).
    """
    g = geometry
    if native:
        return min(_NATIVE_TILE[0], g.out_height), min(_NATIVE_TILE[1], g.out_width)
    if carried and (g.window[0] > g.stride[0] or g.window[1] > g.stride[1]):
        return min(8, g.out_height), min(16, g.out_width)

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


@dataclass
class Plan:
    """What one call computes, per image.

    Attributes:
        geometry: the call's geometry.
        native: whether the native executor runs it (else the torch executor).
        tile: output tile ``(th, tw)`` of ``tiles``.
        paths: per image ``"fill"`` (nothing active), ``"tiles"``, ``"rows"`` or ``"dense"``.
        fractions: per image, the fraction of the output computed.
        tiles: bool ``(B, ceil(H_out / th), ceil(W_out / tw))``, the active output tiles.
        rows: bool ``(B, H_out)``, the active output rows (exact).
        boxes: per image, the row path's boxes (torch executor; empty lists otherwise).
    """

    geometry: ConvGeometry
    native: bool
    tile: Pair
    paths: list[str]
    fractions: list[float]
    tiles: torch.Tensor
    rows: torch.Tensor
    boxes: list[list[Box]]

    @property
    def all_dense(self) -> bool:
        return all(path == "dense" for path in self.paths)

    @property
    def checks_weights(self) -> bool:
        """Whether the executor computes something natively: it then reads every weight, and
        reports one that is not finite (see :func:`zeroskip.engine.native.execute`)."""
        return self.native and any(path in ("tiles", "rows") for path in self.paths)

    def images(self, path: str) -> list[int]:
        return [b for b, chosen in enumerate(self.paths) if chosen == path]


def _extents(count: int, tile: int, size: int) -> list[int]:
    """The outputs each of ``count`` tiles of ``tile`` covers along a side of ``size`` (the last
    one ragged)."""
    return [tile] * (count - 1) + [size - tile * (count - 1)]


def _tile_fractions(active: torch.Tensor, g: ConvGeometry, tile: Pair) -> torch.Tensor:
    """Per image, the fraction of output pixels inside active tiles (ragged edge tiles weighted)."""
    heights, widths = (
        torch.tensor(_extents(count, size, out), dtype=torch.float32, device=active.device)
        for count, size, out in ((active.shape[1], tile[0], g.out_height), (active.shape[2], tile[1], g.out_width))
    )
    return (active.float() * (heights[:, None] * widths[None, :])).sum((1, 2)) / (g.out_height * g.out_width)


def _native_fractions(tiles: torch.Tensor, rows: torch.Tensor, g: ConvGeometry, tile: Pair) -> list[float]:
    """Per image, the fraction of output pixels the native executor computes: the lanes of the
    vectors that cover the active tiles of active rows, or those tiles' outputs where its kernel
    for the layer computes pixel by pixel (what its time grows with)."""
    pixels = g.out_height * g.out_width
    # The maps are bool on the CPU: read as uint8 in place.
    lanes = native.computed(tiles.view(torch.uint8), rows.view(torch.uint8), (g.out_height, g.out_width), tile,
                            g.kernel[0] * g.kernel[1], g.out_channels // g.groups)
    return [count / pixels for count in lanes]


def make_plan(
    g: ConvGeometry,
    mode: str,
    tile: Pair,
    costs: ImageCosts,
    native: bool,
    tiles: torch.Tensor,
    rows: torch.Tensor,
    columns: torch.Tensor,
    block: Pair,
) -> Plan:
    """Choose each image's path.

    Args:
        mode: ``"auto"``, ``"tiles"`` or ``"rows"``.
        tiles, rows: the check's bool maps (active tiles, exact active rows).
        columns: bool ``(B, R, J)``, blocks of ``block`` output pixels holding an active output
            (the tile map, or the exact activity of a carried input), for the torch row path's boxes.
    """
    # Both bool from here on (the native executor reads them as uint8 in place).
    tiles, rows = tiles.bool(), rows.bool()
    if native:
        if mode == "rows":
            fractions = rows.numpy().mean(1).tolist()
            paths = ["rows" if f else "fill" for f in fractions]
        else:
            fractions = _native_fractions(tiles, rows, g, tile)
            if mode == "tiles":
                paths = ["tiles" if f else "fill" for f in fractions]
            else:
                paths, fractions = map(list, zip(*(choose_native(costs, f) for f in fractions)))
        return Plan(g, True, tile, paths, fractions, tiles, rows, [[] for _ in paths])

    boxes = row_boxes(rows, columns, block, g.out_width, costs) if mode != "tiles" else [[] for _ in rows]
    paths, fractions = [], []
    for tile_fraction, image_boxes in zip(_tile_fractions(tiles, g, tile).tolist(), boxes):
        row_fraction = box_fraction(image_boxes, g)
        if mode == "rows":
            chosen = ("rows", row_fraction) if row_fraction else ("fill", 0.0)
        elif mode == "tiles":
            chosen = ("tiles", tile_fraction) if tile_fraction else ("fill", 0.0)
        else:
            chosen = choose(costs, tile_fraction, row_fraction, costs.boxes(image_boxes))
        paths.append(chosen[0])
        fractions.append(chosen[1])
    return Plan(g, False, tile, paths, fractions, tiles, rows, boxes)


def carried_maps(activity: torch.Tensor, tile: Pair) -> tuple[torch.Tensor, torch.Tensor]:
    """The tile map and the active rows of a carried output activity.

    Args:
        activity: uint8 ``(B, H_out, W_out)``.
        tile: ``(th, tw)``.

    Returns:
        Bool ``(B, ceil(H_out / th), ceil(W_out / tw))`` and ``(B, H_out)``.
    """
    # One native pass where the library is built: the torch reductions cost 5-10x more per layer.
    maps = native.carried_maps(activity, tile)
    return maps if maps is not None else (block_any(activity, tile), activity.any(2))
