"""Output allocation.

A freshly allocated large tensor costs one page fault per 4 KiB on first write; for the outputs of
early layers on video frames (hundreds of MB at batch 16) those faults cost more than the
convolutions zeroskip keeps. Large CPU outputs are therefore mapped with transparent huge pages
(one fault per 2 MiB) where the kernel allows it. ``ZEROSKIP_HUGEPAGES=0`` turns this off.
"""

from __future__ import annotations

import math
import mmap
import os

import torch

# glibc serves smaller blocks from its heap, reusing pages already faulted in; from 32 MiB on
# it maps fresh memory for every allocation.
_HUGEPAGE_MIN_BYTES = 32 << 20
_HUGEPAGES = hasattr(mmap, "MADV_HUGEPAGE") and os.environ.get("ZEROSKIP_HUGEPAGES", "1") != "0"


def empty_strided(
    shape: tuple[int, ...], strides: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, bool]:
    """``torch.empty_strided`` that maps large, dense CPU tensors with transparent huge pages.

    Returns:
        The tensor, and whether its memory is known to be zero already (fresh anonymous pages),
        so that a zero fill can be skipped.
    """
    numel = math.prod(shape)
    itemsize = dtype.itemsize
    # Strides that span exactly numel elements: a permutation of a contiguous layout.
    dense = numel > 0 and 1 + sum((size - 1) * stride for size, stride in zip(shape, strides)) == numel
    if not (_HUGEPAGES and device.type == "cpu" and dense and numel * itemsize >= _HUGEPAGE_MIN_BYTES):
        return torch.empty_strided(shape, strides, dtype=dtype, device=device), False
    buffer = mmap.mmap(-1, numel * itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buffer.madvise(mmap.MADV_HUGEPAGE)
    # The tensor keeps the mapping alive; it is unmapped when the tensor's storage is freed.
    flat = torch.frombuffer(buffer, dtype=dtype, count=numel)
    return flat.as_strided(shape, strides), True
