"""Cost model of the auto mode: predicted time of each path for one image, from the geometry.

Times are in nanoseconds per element or per multiply-accumulate, calibrated from measurements
of the benchmark suite (``benchmarks/``) on a 2-core AVX-512 machine; the model only has to rank
the paths and to say when no sparse path can beat dense, so its constants need to be right
within a factor, not exactly. A sparse path is taken only when predicted at least
``_MARGIN`` cheaper than dense, so that model error costs speed-up, never a slow-down.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from .._geometry import ConvGeometry

_NS_PER_MAC = 0.012  # one multiply-accumulate inside a convolution call
_NS_PER_OUTPUT = 0.12  # writing one float32 output element once (fill, or the convolution's store)
_NS_PER_CHECK = 0.4  # activity check, per input element (two reductions over the input)
_NS_PER_COPY = 0.3  # gathering one input element into a tile patch, or copying one output element back
_NS_FIXED = 400_000.0  # Python and small-tensor bookkeeping of one sparse call (torch executor)
_NS_FIXED_NATIVE = 100_000.0  # the same with the native executor: one call, no per-box bookkeeping
# The native executor's kernel against oneDNN's dense convolution, per computed output, at full
# activity with glibc's heap pinned (dense without the page faults of its scratch buffer): 1.1-1.2x
# on 3x3 layers of 64-256 channels at 1 and 2 threads, 1.4-1.5x on 512 channels, 0.95-1.1x on the
# 3-channel 7x7 stem (AVX-512, session 7); 1-row tiles on scattered activity (blobs) cost up to
# 1.35x at 2 threads. Over-estimated rather than under: a wrong sparse choice costs speed against
# dense, a wrong dense one only speed-up.
_NATIVE_SLOWDOWN = 1.4
_NATIVE_SLOWDOWN_FEW_CHANNELS = 1.3
_FEW_CHANNELS = 8
# One more convolution call (a box of the row path): Python, slicing, and oneDNN's set-up, which
# reorders the weights on every call (measured 25 us for 64x64x3x3 to 390 us for 512x512x3x3).
_NS_PER_CALL = 40_000.0
_NS_PER_WEIGHT_BYTE = 0.04
# Convolving many small patches runs oneDNN below its full-image efficiency (the full W3 sweep of
# benchmarks/results: the tile path costs 1.3x to 2x dense per computed output).
_PATCH_SLOWDOWN = 2.0
_MARGIN = 0.9
# The check is paid on every call, also when it ends dense: it must be a small share of the dense
# cost, or inputs that turn out dense (the common case deep in a network) pay too much for it.
_CHECK_SHARE = 0.25
# A carried input's activity costs nothing to know: skipping must only not lose on an all-zero input.
_CARRIED_SHARE = _MARGIN


@dataclass(frozen=True)
class ImageCosts:
    """Predicted nanoseconds per image of each path, for a layer and input size."""

    dense: float
    fill: float
    check: float
    tiles_full: float  # tiles path on a fully active image, without fill and check
    rows_full: float
    call: float  # one more convolution call, beside its outputs
    pixel: float  # one output pixel (all channels) computed by the row path
    halo: tuple[float, float]  # (rows, columns) of outputs a box costs beside its own, from its input halo
    native_full: float  # native executor on a fully active image, without fill and check

    def tiles(self, fraction: float) -> float:
        return self.fill + self.check + fraction * self.tiles_full

    def native(self, fraction: float) -> float:
        """The native executor computing ``fraction`` of the image and filling the rest."""
        return self.check + (1.0 - fraction) * self.fill + fraction * self.native_full

    def rows(self, fraction: float) -> float:
        """The row path as one box holding ``fraction`` of the image (a lower bound for any boxes)."""
        return self.fill + self.check + self.call + fraction * self.rows_full

    def box(self, height: int, width: int) -> float:
        """One box of ``height x width`` outputs. Small boxes run oneDNN far below its whole-image
        speed (a 3x3 64->64 convolution of 8x8 outputs: 6x the time per output); counting the
        outputs their input halo would give matches the measurements within a factor."""
        return self.call + self.pixel * (height + self.halo[0]) * (width + self.halo[1])

    def boxes(self, boxes: Sequence[tuple[int, int, int, int]]) -> float:
        return self.fill + self.check + sum(self.box(o1 - o0, c1 - c0) for o0, o1, c0, c1 in boxes)


@functools.lru_cache(maxsize=256)
def image_costs(g: ConvGeometry, itemsize: int, checked: bool = True) -> ImageCosts:
    """Costs of one image of a layer; memory terms scale with the element size. ``checked=False``:
    the activity is known (carried through a network), so there is no check to pay."""
    width = itemsize / 4
    outputs = g.out_channels * g.out_height * g.out_width
    inputs = g.in_channels * g.height * g.width
    macs = outputs * (g.in_channels // g.groups) * g.kernel[0] * g.kernel[1]
    store = outputs * _NS_PER_OUTPUT * width
    convolution = macs * _NS_PER_MAC + store
    # Input read per tile over its share, for the torch executor's default 16 x 32 tiles.
    halo = (1 + g.window[0] / (16 * g.stride[0])) * (1 + g.window[1] / (32 * g.stride[1]))
    rows_full = convolution + outputs * _NS_PER_COPY * width
    weight_bytes = g.out_channels * (g.in_channels // g.groups) * g.kernel[0] * g.kernel[1] * itemsize
    return ImageCosts(
        dense=convolution,
        fill=store,
        check=inputs * _NS_PER_CHECK * width if checked else 0.0,
        tiles_full=_PATCH_SLOWDOWN * convolution + (outputs + inputs * halo) * _NS_PER_COPY * width,
        rows_full=rows_full,
        call=_NS_PER_CALL + weight_bytes * _NS_PER_WEIGHT_BYTE,
        pixel=rows_full / (g.out_height * g.out_width),
        halo=((g.window[0] - 1) / g.stride[0], (g.window[1] - 1) / g.stride[1]),
        native_full=convolution * (
            _NATIVE_SLOWDOWN_FEW_CHANNELS if g.in_channels // g.groups < _FEW_CHANNELS else _NATIVE_SLOWDOWN
        ),
    )


def sparse_can_win(costs: ImageCosts, batch: int, native: bool) -> bool:
    """Whether checking is worth it: an all-zero batch (fill and check only) must cost a small
    share of dense, or the check would slow down every input that turns out dense. Without a check
    (a carried input) it must only beat dense: the plan then runs dense where the activity is high,
    having cost only its bookkeeping."""
    fixed = _NS_FIXED_NATIVE if native else _NS_FIXED
    share = _CHECK_SHARE if costs.check else _CARRIED_SHARE
    return fixed + batch * (costs.fill + costs.check) < share * batch * costs.dense


def choose_native(costs: ImageCosts, fraction: float) -> tuple[str, float]:
    """The native executor's choice for one image computing ``fraction`` of its output: fill
    (nothing active), its tiles, or dense."""
    if fraction == 0.0:
        return "fill", 0.0
    if costs.native(fraction) >= _MARGIN * costs.dense:
        return "dense", 1.0
    return "tiles", fraction


def choose(
    costs: ImageCosts, tile_fraction: float, row_fraction: float, rows: float | None = None
) -> tuple[str, float]:
    """The cheapest path for one image, and the fraction of its output that path computes.

    ``rows``: the row path's cost when its boxes are known (else it is costed as one box).
    """
    if tile_fraction == 0.0:
        return "fill", 0.0
    tiles = costs.tiles(tile_fraction)
    rows = costs.rows(row_fraction) if rows is None else rows
    if min(tiles, rows) >= _MARGIN * costs.dense:
        return "dense", 1.0
    return ("rows", row_fraction) if rows < tiles else ("tiles", tile_fraction)
