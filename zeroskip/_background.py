"""The background field: what a tensor holds wherever the frame's active region cannot reach.

After the first layer the inactive part of a feature map is no longer zero. Away from the image
borders it is a per-channel constant; near them it varies, because windows that overlap zero
padding see zeros instead of the constant, and that edge effect widens with every layer. A
:class:`Background` stores such a field compactly: the rows of a top band and a bottom band, one
interior row standing for all rows between them, and the same for columns. When the bands meet,
the field is stored whole.

Windowed operations (convolution, pooling) are applied to a miniature image that has the same
bands and just enough interior to hold one interior output, with a height congruent to the real
one modulo the stride so that the bottom band lines up exactly as in the real image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Bands = tuple[int, int]


def _core_index(size: int, bands: Bands) -> list[int]:
    """For every position ``0 <= i < size`` of one axis, its index in the core of a field with ``bands``."""
    lead, trail = bands
    if lead + trail >= size:
        return list(range(size))
    return [*range(lead), *([lead] * (size - lead - trail)), *range(lead + 1, lead + 1 + trail)]


def _compress(index: list[int], interior: int | None) -> tuple[list[int], Bands]:
    """Core indices (and bands) of a field whose positions read ``index`` of a source core, where
    source index ``interior`` is the interior value (``None``: the source has none)."""
    inside = [i for i, source in enumerate(index) if source == interior] if interior is not None else []
    if not inside or len(inside) != inside[-1] - inside[0] + 1:
        return index, (len(index), 0)
    first, last = inside[0], inside[-1]
    return [*index[:first], interior, *index[last + 1 :]], (first, len(index) - 1 - last)


def _select(core: torch.Tensor, row_index: list[int], col_index: list[int]) -> torch.Tensor:
    """``core[:, :, row_index][:, :, :, col_index]``, without copies for whole axes."""
    if row_index != list(range(core.shape[2])):
        core = core.index_select(2, torch.tensor(row_index, device=core.device))
    if col_index != list(range(core.shape[3])):
        core = core.index_select(3, torch.tensor(col_index, device=core.device))
    return core


def _trim(core: torch.Tensor, dim: int, bands: Bands) -> tuple[torch.Tensor, Bands]:
    """Drop band rows (``dim=2``) or columns (``dim=3``) next to the interior that equal it exactly."""
    lead, trail = bands
    if lead + trail >= core.shape[dim]:
        return core, bands
    keep = list(range(core.shape[dim]))
    interior = core.select(dim, lead)
    while lead and torch.equal(core.select(dim, lead - 1), interior):
        lead -= 1
        keep.pop(lead)
    while trail and torch.equal(core.select(dim, keep[lead + 1]), interior):
        trail -= 1
        keep.pop(lead + 1)
    if len(keep) == core.shape[dim]:
        return core, bands
    return core.index_select(dim, torch.tensor(keep, device=core.device)), (lead, trail)


def _mini_axis(size: int, bands: Bands, window: int, stride: int) -> list[int]:
    """Core indices of a miniature axis for a windowed op, or of the whole axis when that is not smaller.

    The miniature keeps both bands and at least ``window + stride`` interior positions (room for one
    window clear of both bands), and has the real length modulo ``stride``.
    """
    lead, trail = bands
    if lead + trail >= size:
        return list(range(size))
    length = lead + window + stride + trail
    length += (size - length) % stride
    if length >= size:
        return _core_index(size, bands)
    return [*range(lead), *([lead] * (length - lead - trail)), *range(lead + 1, lead + 1 + trail)]


@dataclass(frozen=True)
class Background:
    """A field ``(Bb, C, H, W)`` that is constant except in bands along the borders (``Bb`` is 1 or B).

    Attributes:
        core: ``(Bb, C, top + 1 + bottom, left + 1 + right)``: band rows, one interior row, band
            rows (columns alike); or the whole ``(Bb, C, H, W)`` field on an axis whose bands meet.
        size: ``(H, W)`` of the field.
        rows: ``(top, bottom)`` band heights; ``(H, 0)`` when stored whole.
        cols: ``(left, right)`` band widths; ``(W, 0)`` when stored whole.
    """

    core: torch.Tensor
    size: tuple[int, int]
    rows: Bands
    cols: Bands

    @classmethod
    def constant(cls, values: torch.Tensor, size: tuple[int, int]) -> Background:
        """A field equal to ``values`` ``(Bb, C)`` everywhere in an image of ``size``."""
        return cls(values[:, :, None, None], size, (0, 0), (0, 0))

    def _gather(self, row_index: list[int], col_index: list[int]) -> torch.Tensor:
        return _select(self.core, row_index, col_index)

    @functools.cached_property
    def _pieces(self) -> list[tuple[slice, torch.Tensor]]:
        """(rows of the field, values ``(Bb, C, rows or 1, W)`` to broadcast into them), covering the
        field with whole rows: copies with a dense innermost dimension are several times faster than
        broadcasting a per-channel constant. Computed once per field, and a convolution's background
        is cached across frames."""
        (top, bottom), height = self.rows, self.size[0]
        all_cols = _core_index(self.size[1], self.cols)
        if top + bottom >= height:
            return [(slice(None), self.dense())]
        pieces = [(slice(top, height - bottom), self._gather([top], all_cols))]
        if top:
            pieces.append((slice(0, top), self._gather(list(range(top)), all_cols)))
        if bottom:
            bottom_rows = list(range(top + 1, top + 1 + bottom))
            pieces.append((slice(height - bottom, height), self._gather(bottom_rows, all_cols)))
        return pieces

    def fill(self, out: torch.Tensor) -> None:
        """Write the field into ``out`` ``(B, C, H, W)``."""
        for rows, values in self._pieces:
            out[:, :, rows] = values

    def dense(self) -> torch.Tensor:
        """The whole field ``(Bb, C, H, W)``."""
        return self._gather(_core_index(self.size[0], self.rows), _core_index(self.size[1], self.cols))

    def with_bands(self, rows: Bands, cols: Bands) -> Background:
        """The same field stored with wider bands (each at least this one's)."""
        height, width = self.size
        rows = rows if sum(rows) < height else (height, 0)
        cols = cols if sum(cols) < width else (width, 0)
        if (rows, cols) == (self.rows, self.cols):
            return self
        positions = [_positions(height, rows), _positions(width, cols)]
        own = [_core_index(height, self.rows), _core_index(width, self.cols)]
        return Background(self._gather(*[[o[p] for p in ps] for o, ps in zip(own, positions)]), self.size, rows, cols)

    def map(self, op: Callable[[torch.Tensor], torch.Tensor]) -> Background:
        """Apply a pointwise ``op`` (its output value at a pixel depends only on that pixel)."""
        return Background(op(self.core), self.size, self.rows, self.cols)

    def windowed(
        self,
        op: Callable[[torch.Tensor], torch.Tensor],
        out_size: tuple[int, int],
        window: tuple[int, int],
        stride: tuple[int, int],
        pad: tuple[int, int],
    ) -> Background:
        """Apply a translation-equivariant windowed ``op`` (convolution, pooling) of effective
        ``window``, ``stride`` and leading (top, left) ``pad``, whose real output has ``out_size``."""
        bands = (self.rows, self.cols)
        axes = [_mini_axis(n, b, k, s) for n, b, k, s in zip(self.size, bands, window, stride)]
        mini_out = op(self._gather(*axes))
        keep, out_bands = [], []
        for axis in (0, 1):
            length, mini_length = len(axes[axis]), mini_out.shape[2 + axis]
            if (self.size[axis] - length) % stride[axis] or (
                out_size[axis] - mini_length != (self.size[axis] - length) // stride[axis]
            ):
                # Cannot happen for PyTorch's output-size rules; stay exact if one ever differs.
                whole = list(bands)
                whole[axis] = (self.size[axis], 0)
                return self.with_bands(*whole).windowed(op, out_size, window, stride, pad)
            lead, trail = bands[axis]
            inside = [
                i for i in range(mini_length)
                if lead + trail < length and lead <= i * stride[axis] - pad[axis] <= length - trail - window[axis]
            ]
            if not inside:
                keep.append(list(range(mini_length)))
                out_bands.append((out_size[axis], 0))
                continue
            first, last = inside[0], inside[-1]
            keep.append([*range(first + 1), *range(last + 1, mini_length)])
            out_bands.append((first, mini_length - 1 - last))
        core = _select(mini_out, *keep)
        core, rows = _trim(core, 2, out_bands[0])
        core, cols = _trim(core, 3, out_bands[1])
        return Background(core, out_size, rows, cols)

    def resample(self, row_source: Sequence[int], col_source: Sequence[int]) -> Background:
        """The field read at input rows ``row_source[i]`` and columns ``col_source[j]`` (nearest resizing)."""
        rows = [_core_index(self.size[0], self.rows)[s] for s in row_source]
        cols = [_core_index(self.size[1], self.cols)[s] for s in col_source]
        row_interior = self.rows[0] if sum(self.rows) < self.size[0] else None
        col_interior = self.cols[0] if sum(self.cols) < self.size[1] else None
        row_index, row_bands = _compress(rows, row_interior)
        col_index, col_bands = _compress(cols, col_interior)
        return Background(self._gather(row_index, col_index), (len(rows), len(cols)), row_bands, col_bands)


def _positions(size: int, bands: Bands) -> list[int]:
    """Representative positions of a field with ``bands``: each band position and one interior position."""
    lead, trail = bands
    if lead + trail >= size:
        return list(range(size))
    return [*range(lead + 1), *range(size - trail, size)]


def aligned(fields: Sequence[Background]) -> list[Background]:
    """The ``fields`` (same size) stored with common bands, so that their cores line up."""
    rows = (max(f.rows[0] for f in fields), max(f.rows[1] for f in fields))
    cols = (max(f.cols[0] for f in fields), max(f.cols[1] for f in fields))
    return [f.with_bands(rows, cols) for f in fields]
