"""Where is the input non-zero? Cheap, exact reductions over the input values.

Every function here treats NaN and Inf as non-zero (they are active) and ``-0.0`` as zero.
Reductions are staged so that each pass runs over a non-innermost dimension, where PyTorch
vectorises along the contiguous one; a single multi-dimension ``amax`` is several times slower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Samples per image for the dense-input early exit: enough to tell 50% from 5% density reliably,
# few enough that the check costs well under 1% of any convolution worth sparsifying.
_DENSITY_SAMPLES = 4096


def sampled_density(x: torch.Tensor) -> torch.Tensor:
    """Estimate, per image, the fraction of pixels with a non-zero channel.

    Args:
        x: input of shape ``(B, C, H, W)``.

    Returns:
        Float tensor of shape ``(B,)``. Only an estimate: it steers the choice of path,
        never which outputs are skipped.
    """
    height, width = x.shape[-2:]
    step = max(1, int((height * width / _DENSITY_SAMPLES) ** 0.5))
    sample = x[:, :, ::step, ::step]
    return sample.ne(0).any(1).flatten(1).float().mean(1)


def _nonzero(maxima: torch.Tensor, minima: torch.Tensor) -> torch.Tensor:
    return maxima.ne(0) | minima.ne(0)


def row_activity(x: torch.Tensor) -> torch.Tensor:
    """Per image and input row, whether any value in the row (any channel, any column) is non-zero.

    Args:
        x: input of shape ``(B, C, H, W)``.

    Returns:
        Bool tensor of shape ``(B, H)``.
    """
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # (B, H, W, C) in memory: reduce over W first, then over the contiguous C.
        return _nonzero(x.amax(3).amax(1), x.amin(3).amin(1))
    return _nonzero(x.amax(1).amax(2), x.amin(1).amin(2))


def _reduce_blocks(t: torch.Tensor, dim: int, block: int, reduce) -> torch.Tensor:
    """``reduce`` (``torch.amax`` or ``torch.amin``) over consecutive blocks of ``block`` elements
    along ``dim``; the last block may be short."""
    size = t.shape[dim]
    whole = size - size % block
    result = reduce(t.narrow(dim, 0, whole).unflatten(dim, (whole // block, block)), dim + 1)
    if whole < size:
        result = torch.cat([result, reduce(t.narrow(dim, whole, size - whole), dim, keepdim=True)], dim)
    return result


def cell_activity(x: torch.Tensor, cell: tuple[int, int]) -> torch.Tensor:
    """Per image and ``cell`` block of pixels, whether any value in the block is non-zero.

    Args:
        x: input of shape ``(B, C, H, W)``, any memory layout.
        cell: block size ``(ch, cw)``; the last block of a row or column may be smaller.

    Returns:
        Bool tensor of shape ``(B, ceil(H / ch), ceil(W / cw))``.
    """
    extremes = []
    for reduce in (torch.amax, torch.amin):
        # Block rows first, then channels: on both NCHW and channels_last these are strided
        # dimensions, reduced with vector loads along the contiguous one; then the columns of
        # the (ch x C)-times smaller result.
        reduced = reduce(_reduce_blocks(x, 2, cell[0], reduce), 1)
        extremes.append(_reduce_blocks(reduced, 2, cell[1], reduce))
    return _nonzero(*extremes)


def window_any(active: torch.Tensor, dim: int, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """For each window ``[starts[k], ends[k])`` along ``dim``, whether any element of ``active`` is set.

    Uses a prefix sum, so overlapping windows cost one pass over ``active``.

    Args:
        active: bool tensor.
        dim: dimension the windows run along.
        starts: long tensor of window starts, clipped to ``[0, size]``.
        ends: long tensor of window ends, clipped to ``[0, size]``.

    Returns:
        Bool tensor shaped like ``active`` with ``dim`` replaced by ``len(starts)``.
    """
    counts = active.to(torch.int32).cumsum(dim)
    zero = torch.zeros_like(counts.narrow(dim, 0, 1))
    counts = torch.cat([zero, counts], dim)
    return counts.index_select(dim, ends).sub_(counts.index_select(dim, starts)) > 0


def block_any(activity: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Which blocks of ``block = (bh, bw)`` pixels of an activity map hold an active pixel (the
    active output tiles, from an output activity map).

    Args:
        activity: ``(B, H, W)``, non-zero where active.

    Returns:
        Bool tensor ``(B, ceil(H / bh), ceil(W / bw))``.
    """
    batch, height, width = activity.shape
    padded = F.pad(activity, (0, -width % block[1], 0, -height % block[0]))
    n_i, n_j = padded.shape[1] // block[0], padded.shape[2] // block[1]
    return padded.view(batch, n_i, block[0], n_j, block[1]).amax(4).amax(2).ne(0)
