"""Output allocation.

A freshly mapped large tensor costs one page fault per 4 KiB on its first write; for the outputs of
early layers on video frames (tens to hundreds of MB) those faults can cost more than the
convolutions zeroskip keeps (5x the fill itself on the benchmark machine's VM). Large CPU outputs
are therefore advised to use transparent huge pages (one fault per 2 MiB) before their first
write. Memory the allocator recycles, already faulted in, is unaffected. ``ZEROSKIP_HUGEPAGES=0``
turns this off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

import torch

_HUGE_PAGE = 2 << 20
# Smaller outputs span too few huge pages to matter.
_HUGEPAGE_MIN_BYTES = 4 << 20


def _madvise():
    if os.environ.get("ZEROSKIP_HUGEPAGES", "1") == "0" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).madvise
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_MADVISE = _madvise()


def empty_strided(
    shape: tuple[int, ...], strides: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``torch.empty_strided``; large CPU tensors are advised to use transparent huge pages."""
    tensor = torch.empty_strided(shape, strides, dtype=dtype, device=device)
    size = tensor.untyped_storage().nbytes()
    if _MADVISE is not None and device.type == "cpu" and size >= _HUGEPAGE_MIN_BYTES:
        address = tensor.untyped_storage().data_ptr()
        # Only whole huge pages inside the tensor's memory: never advise a neighbour's.
        start = -(-address // _HUGE_PAGE) * _HUGE_PAGE
        end = (address + size) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            _MADVISE(start, end - start, mmap.MADV_HUGEPAGE)  # advice only: a failure changes nothing
    return tensor
