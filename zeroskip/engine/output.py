"""Stage 3, output: the output tensor, with the strides and memory format ``F.conv2d`` gives.

A freshly mapped large tensor costs one page fault per 4 KiB on its first write, and the kernel
zeroes each page it maps; for the outputs of early layers on video frames (tens to hundreds of MB)
those faults can cost more than the convolutions zeroskip keeps (on the benchmark machine's VM,
writing a fresh 133 MB output costs 60-80 ms, the 1080p stem's whole dense convolution about 70).

* Outputs the native executor writes, of at least :data:`_ZEROED_MIN_BYTES`, have the whole pages
  inside them given back to the kernel (``MADV_DONTNEED``: private anonymous memory then reads as
  zeros, each page mapped again on its first write): the executor writes no +0.0 background (no
  bias, a zero bias entry) there, and the pages under it are never touched. glibc, with its default
  settings, serves every block that large from a fresh mapping (dense's output included), whose
  pages are not there yet, so this costs next to nothing: what dense pays for every page, zeroskip
  pays for the pages it writes. Memory a tuned heap recycles (pages already there, which the
  executor fills faster than the kernel would map them again) is left alone.
* Other large CPU outputs are advised to use transparent huge pages (one fault per 2 MiB) before
  their first write. Memory the allocator recycles, already faulted in, is unaffected.
  ``ZEROSKIP_HUGEPAGES=0`` turns this off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys

import torch
import torch.nn.functional as F

from .._geometry import ConvGeometry

_HUGE_PAGE = 2 << 20
# Smaller outputs span too few huge pages to matter.
_HUGEPAGE_MIN_BYTES = 4 << 20


def _libc(name: str, argtypes: list) -> ctypes._CFuncPtr | None:
    """A Linux libc function (the semantics used here are Linux's), or ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), name)
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


def _whole_pages(address: int, size: int, page: int) -> tuple[int, int]:
    """``[start, end)``: the whole pages of ``page`` bytes inside ``size`` bytes at ``address``, so
    that advice never reaches a neighbour's memory (``end <= start``: none)."""
    return -(-address // page) * page, (address + size) // page * page


_MADVISE = _libc("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
_MINCORE = _libc("mincore", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p])
_HUGEPAGES = os.environ.get("ZEROSKIP_HUGEPAGES", "1") != "0" and hasattr(mmap, "MADV_HUGEPAGE")


def empty_strided(
    shape: tuple[int, ...], strides: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``torch.empty_strided``; large CPU tensors are advised to use transparent huge pages."""
    tensor = torch.empty_strided(shape, strides, dtype=dtype, device=device)
    size = tensor.untyped_storage().nbytes()
    if _HUGEPAGES and _MADVISE is not None and device.type == "cpu" and size >= _HUGEPAGE_MIN_BYTES:
        start, end = _whole_pages(tensor.untyped_storage().data_ptr(), size, _HUGE_PAGE)
        if end > start:
            _MADVISE(start, end - start, mmap.MADV_HUGEPAGE)  # advice only: a failure changes nothing
    return tensor


# Output memory format per call signature; bounded because shapes vary without limit.
_OUTPUT_FORMATS: dict[tuple, bool] = {}
_OUTPUT_FORMATS_MAX = 256


def _dense_output_strides(x: torch.Tensor, weight: torch.Tensor, g: ConvGeometry) -> tuple[int, ...]:
    """Strides of the tensor ``F.conv2d`` returns for this call.

    The backend picks channels_last or contiguous from the strides, dtype and device of the input
    and weight (the meta device does not follow CPU's choice), so ask it once per call signature:
    convolve a corner of the input just large enough that every output dimension longer than one
    stays longer than one.
    """
    key = (x.shape, x.stride(), weight.shape, weight.stride(), x.dtype, x.device, g)
    channels_last = _OUTPUT_FORMATS.get(key)
    if channels_last is None:
        corner = x[:1, :, : g.window[0] + g.stride[0], : g.window[1] + g.stride[1]]
        # Only "same" pads asymmetrically.
        padding = (g.pad_top, g.pad_left) if g.symmetric_padding else "same"
        probe = F.conv2d(corner, weight, None, g.stride, padding, g.dilation, g.groups)
        channels_last = probe.is_contiguous(memory_format=torch.channels_last) and not probe.is_contiguous()
        if len(_OUTPUT_FORMATS) >= _OUTPUT_FORMATS_MAX:
            _OUTPUT_FORMATS.clear()
        _OUTPUT_FORMATS[key] = channels_last
    c, h, w = g.out_channels, g.out_height, g.out_width
    return (c * h * w, 1, w * c, c) if channels_last else (c * h * w, h * w, w, 1)


# glibc's largest dynamic mmap threshold on 64-bit systems.
_ZEROED_MIN_BYTES = 32 << 20
_PAGE = mmap.PAGESIZE
# Pages sampled to tell fresh memory from recycled memory.
_RESIDENT_SAMPLES = 4


def _fresh(start: int, end: int) -> bool:
    """Whether none of a few sampled pages in ``[start, end)`` is resident: the memory is a fresh
    mapping (glibc's defaults), not recycled and already faulted in (a tuned heap). A guess that
    only steers speed: discarding recycled pages would cost faults that filling them does not."""
    if _MINCORE is None:
        return False
    pages = (end - start) // _PAGE
    resident = ctypes.c_ubyte()
    for sample in range(_RESIDENT_SAMPLES):
        page = start + pages * sample // _RESIDENT_SAMPLES * _PAGE
        if _MINCORE(page, _PAGE, ctypes.byref(resident)) != 0 or resident.value & 1:
            return False
    return True


def new_output(
    x: torch.Tensor, weight: torch.Tensor, g: ConvGeometry, zeroed: bool = False
) -> tuple[torch.Tensor, tuple[int, int]]:
    """An uninitialised output ``(B, C_out, H_out, W_out)``, laid out as ``F.conv2d``'s would be.

    Args:
        zeroed: the native executor writes it: a large CPU output's whole pages may be zeroed.

    Returns:
        The output, and the addresses ``[start, end)`` of its memory that reads as +0.0 (``(0, 0)``:
        none).
    """
    shape = (g.batch, g.out_channels, g.out_height, g.out_width)
    strides = _dense_output_strides(x, weight, g)
    size = x.element_size() * g.batch * g.out_channels * g.out_height * g.out_width
    if not (zeroed and _MADVISE is not None and x.device.type == "cpu" and size >= _ZEROED_MIN_BYTES):
        return empty_strided(shape, strides, x.dtype, x.device), (0, 0)
    out = torch.empty_strided(shape, strides, dtype=x.dtype, device=x.device)
    start, end = _whole_pages(out.untyped_storage().data_ptr(), out.untyped_storage().nbytes(), _PAGE)
    # MADV_DONTNEED, not the sample, is what makes the pages read as +0.0 (private anonymous memory).
    if end <= start or not _fresh(start, end) or _MADVISE(start, end - start, mmap.MADV_DONTNEED) != 0:
        return out, (0, 0)
    return out, (start, end)


# Linux 5.14's MADV_POPULATE_READ (not in Python's mmap module before 3.13's list of constants).
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
# Smaller tensors span too few pages for the call to matter.
_POPULATE_MIN_BYTES = 1 << 20


def populate_for_reading(tensor: torch.Tensor) -> None:
    """Map the pages of a CPU tensor's memory before a pass that reads all of it.

    The pages of a large output that zeroskip never wrote (see :func:`new_output`) are mapped on
    their first read, one fault per 4 KiB: a count over a mostly skipped 450 MB batch output took
    250 ms, most of it faults. One ``MADV_POPULATE_READ`` maps them all (the kernel's zero page) in
    about a tenth of that. Advice only: contents never change, and where the kernel lacks it nothing
    happens.
    """
    if tensor.device.type != "cpu":
        return
    dense = tensor.is_contiguous() or tensor.is_contiguous(memory_format=torch.channels_last)
    storage = tensor.untyped_storage()
    # A slice of a batch (one frame) spans its own part of the batch's memory.
    address = tensor.data_ptr() if dense else storage.data_ptr()
    size = tensor.numel() * tensor.element_size() if dense else storage.nbytes()
    if _MADVISE is None or size < _POPULATE_MIN_BYTES:
        return
    start, end = _whole_pages(address, size, _PAGE)
    if end > start:
        _MADVISE(start, end - start, _MADV_POPULATE_READ)
