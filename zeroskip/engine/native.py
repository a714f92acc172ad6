"""The native parts of the engine: the activity scan (``_scan.c``), the executor (``_execute.c``),
the activity maps of carried inputs (``_carry.c``) and the max pooling of carried inputs
(``_pool.c``), built on first use with the system C compiler and called through ctypes (which
releases the GIL).

The build needs only a C compiler (no PyTorch headers, no ninja) and takes about a second; the
library is cached per source version, compiler flags and CPU under ``$XDG_CACHE_HOME/zeroskip``
(or ``~/.cache``). It is compiled for the CPU it runs on (``-march=native``), so a cache shared by
machines of different CPUs keeps one library per CPU. Without a compiler, on a platform it does not
build on, or with ``ZEROSKIP_NATIVE=0``, the engine's torch paths run instead: the torch check
finds the same or more active tiles (it rounds windows out to activity cells), the torch executor
computes the same outputs with ``F.conv2d``, and torch ops compute the same carry maps and pooling.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .._geometry import ConvGeometry, Pair
from . import _abi

_SOURCES = tuple(
    Path(__file__).with_name(name) for name in ("_scan.c", "_execute.c", "_carry.c", "_pool.c", "_parallel.c")
)
_HEADERS = tuple(Path(__file__).with_name(name) for name in ("_background.h", "_parallel.h"))
_FLAGS = ["-O3", "-march=native", "-shared", "-fPIC"]
# zeroskip_execute's result bits (_execute.c)
_OUT_OF_MEMORY, _NOT_FINITE = 1, 2
# Threads: OpenMP first (PyTorch's own thread pool, see _parallel.c), else threads of its own.
_THREAD_FLAGS = (["-fopenmp"], ["-pthread"])
_ELEMENT_SIZES = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4, torch.float64: 8}
# Below this many input bytes, starting a second thread for the scan costs more than it saves.
_PARALLEL_MIN_BYTES = 1 << 20
# Output rows per work item of the scan, and per unit of a sample of it: rows of tiles a few output
# rows tall share, within one, the flags of the input rows under them instead of reading them again.
_UNIT_ROWS = 8
# The executor's kernel (exec_job's by_channels): -1 lets it choose per layer; the tests force 0
# (vectors of pixels) and 1 (vectors of output channels) to check each on every geometry.
_KERNEL = -1
# Builds slower than this say so on stderr, once.
_SLOW_BUILD_S = 1.0

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failure: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "zeroskip"


def _cpu_signature() -> bytes:
    """What ``-march=native`` depends on: the CPU's model and feature flags where Linux says them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor().encode()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted})).encode()


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    # Extra compiler flags, for checking the native code (the tests build it with AddressSanitizer).
    extra = os.environ.get("ZEROSKIP_NATIVE_CFLAGS", "").split()
    digest = hashlib.sha256(
        b"".join(source.read_bytes() for source in (*_SOURCES, *_HEADERS))
        + " ".join([str(compiler), *_FLAGS, *extra, platform.machine()]).encode()
        + _cpu_signature()
    ).hexdigest()[:16]
    target = _cache_dir() / f"engine-{digest}.so"
    if not target.exists():
        if compiler is None:
            raise OSError("no C compiler (cc, gcc) on PATH")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built beside the target and renamed into place, so that concurrent builds never load half a file.
        handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(handle)
        start = time.perf_counter()
        try:
            for threads in _THREAD_FLAGS:
                command = [compiler, *_FLAGS, *extra, *threads, *map(str, _SOURCES), "-o", partial]
                done = subprocess.run(command, capture_output=True, timeout=120)
                if done.returncode == 0:
                    break
            else:
                raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        if time.perf_counter() - start > _SLOW_BUILD_S:
            print(f"zeroskip: built its native engine in {time.perf_counter() - start:.1f} s ({target})",
                  file=sys.stderr)
    library = ctypes.CDLL(str(target))
    library.zeroskip_scan.restype = ctypes.c_int
    library.zeroskip_scan.argtypes = [
        ctypes.c_void_p, *[ctypes.c_int64] * 8, ctypes.c_int, *[ctypes.c_int64] * 11,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int,
    ]
    library.zeroskip_dilate.restype = ctypes.c_int
    library.zeroskip_dilate.argtypes = [
        ctypes.c_void_p, *[ctypes.c_int64] * 5, ctypes.c_void_p, *[ctypes.c_int64] * 10,
    ]
    library.zeroskip_carried_maps.restype = None
    library.zeroskip_carried_maps.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 7, ctypes.c_void_p, ctypes.c_void_p]
    library.zeroskip_parallel_limit.restype = ctypes.c_int
    library.zeroskip_parallel_limit.argtypes = []
    library.zeroskip_computed.restype = None
    library.zeroskip_computed.argtypes = [ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int64] * 9, ctypes.c_void_p]
    library.zeroskip_max_pool.restype = ctypes.c_int
    library.zeroskip_max_pool.argtypes = [
        ctypes.c_void_p, *[ctypes.c_int64] * 8, ctypes.c_void_p, *[ctypes.c_int64] * 14,
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, *[ctypes.c_int64] * 7, ctypes.c_int,
    ]
    _abi.declare(library)
    return library


def library() -> ctypes.CDLL | None:
    """The loaded native library, building it on the first call; ``None`` where it cannot be built."""
    global _library, _failure
    if _library is not None or _failure is not None:
        return _library
    with _lock:
        if _library is None and _failure is None:
            if os.environ.get("ZEROSKIP_NATIVE", "1") == "0":
                _failure = "disabled by ZEROSKIP_NATIVE=0"
            else:
                try:
                    _library = _build()
                except (OSError, subprocess.SubprocessError) as error:
                    _failure = f"native engine unavailable ({error}); using the torch check and executor"
    return _library


def unavailable_reason() -> str | None:
    """Why the native scan and executor are not used, or ``None`` when they are."""
    library()
    return _failure


def scan_unit(tile: Pair) -> int:
    """Rows of tiles per unit of :func:`scan`: what a sample with ``row_step`` takes one in ``row_step`` of."""
    return max(1, _UNIT_ROWS // tile[0])


def scan(
    x: torch.Tensor,
    geometry: ConvGeometry,
    tile: Pair,
    row_step: int = 1,
    rest_of: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Which output tiles and which output rows have a non-zero value in their receptive field.

    Args:
        x: input ``(B, C, H, W)``; CPU, floating point, any strides.
        tile: output tile ``(th, tw)``.
        row_step: scan only every ``row_step``-th unit of :func:`scan_unit` rows of tiles (a
            sample); the flags of the tiles and output rows of the others are ``False``.
        rest_of: the maps of such a sample (with the same ``row_step``), completed in place by
            scanning the units it left: together one pass over the input.

    Returns:
        Bool tensors ``(B, ceil(H_out / th), ceil(W_out / tw))`` and ``(B, H_out)``, or ``None``
        where the native scan does not apply (no library, another device or dtype): the caller
        then checks with torch.
    """
    size = _ELEMENT_SIZES.get(x.dtype)
    if size is None or x.device.type != "cpu" or x.numel() == 0:
        return None
    native = library()
    if native is None:
        return None
    g = geometry
    tiles_i, tiles_j = -(-g.out_height // tile[0]), -(-g.out_width // tile[1])
    if rest_of is not None:
        tiles, rows = rest_of
    else:
        # Not torch.zeros: the scan clears the flags of the units a sample leaves (a torch fill of
        # a map this size is a parallel region of its own).
        tiles = torch.empty((x.shape[0], tiles_i, tiles_j), dtype=torch.bool)
        rows = torch.empty((x.shape[0], g.out_height), dtype=torch.bool)
    threads = torch.get_num_threads() if x.numel() * size >= _PARALLEL_MIN_BYTES else 1
    failed = native.zeroskip_scan(
        # data_ptr() already points at the storage offset of a view.
        x.data_ptr(), *x.shape, *x.stride(), size,
        tiles_i, tile[0], g.stride[0], g.pad_top, g.window[0], g.out_height,
        tiles_j, tile[1], g.stride[1], g.pad_left, g.window[1],
        tiles.data_ptr(), rows.data_ptr(), scan_unit(tile), row_step, rest_of is not None, threads,
    )
    return None if failed else (tiles, rows)


def _activity_map(activity: torch.Tensor) -> torch.Tensor | None:
    """``activity`` as the native activity functions read it (uint8 on the CPU, contiguous columns),
    or ``None`` where they do not apply."""
    if activity.dtype != torch.uint8 or activity.device.type != "cpu" or library() is None:
        return None
    # A batch broadcast from one image (stride 0) is read as it is; only the columns must be contiguous.
    return activity if activity.stride(-1) == 1 else activity.contiguous()


def dilate(
    activity: torch.Tensor, out_size: Pair, kernel: Pair, stride: Pair, dilation: Pair, pad: Pair
) -> torch.Tensor | None:
    """:func:`zeroskip.activation.dilate` in one pass: the same bytes.

    Args:
        activity: uint8 ``(B, 1, H, W)``, any strides.
        out_size, kernel, stride, dilation, pad: as :func:`zeroskip.activation.dilate`'s.

    Returns:
        Contiguous uint8 ``(B, 1, H_out, W_out)``, or ``None`` where the native code does not apply
        (no library, another device or dtype, over 64 taps along an axis, a failed allocation):
        the caller then uses torch.
    """
    source = _activity_map(activity)
    if source is None:
        return None
    out = torch.empty((source.shape[0], 1, *out_size), dtype=torch.uint8)
    failed = library().zeroskip_dilate(
        source.data_ptr(), source.shape[0], *source.shape[2:], source.stride(0), source.stride(2),
        out.data_ptr(), *out_size,
        kernel[0], stride[0], dilation[0], pad[0], kernel[1], stride[1], dilation[1], pad[1],
    )
    return None if failed else out


def carried_maps(activity: torch.Tensor, tile: Pair) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Which tiles of ``tile`` pixels and which rows of an activity map hold an active pixel.

    Args:
        activity: uint8 ``(B, H, W)``, non-zero where active, any strides.
        tile: ``(th, tw)``.

    Returns:
        Bool ``(B, ceil(H / th), ceil(W / tw))`` and ``(B, H)``, or ``None`` where the native code
        does not apply (no library, another device or dtype): the caller then uses torch.
    """
    source = _activity_map(activity)
    if source is None:
        return None
    batch, height, width = source.shape
    tiles = torch.empty((batch, -(-height // tile[0]), -(-width // tile[1])), dtype=torch.bool)
    rows = torch.empty((batch, height), dtype=torch.bool)
    library().zeroskip_carried_maps(
        source.data_ptr(), batch, height, width, source.stride(0), source.stride(1), *tile,
        tiles.data_ptr(), rows.data_ptr(),
    )
    return tiles, rows


def _checked_maps(
    caller: str, tiles: torch.Tensor, rows: torch.Tensor | None, batch: int, out_size: Pair, tile: Pair
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``tiles`` and ``rows`` contiguous, once they are checked to be the uint8 tile map
    ``(B, ceil(H_out / th), ceil(W_out / tw))`` and row map ``(B, H_out)`` of the call.

    Raises:
        ValueError: they are not: the C code trusts these shapes and reads the maps as bytes, so a
            mismatch would be read out of bounds.
    """
    maps_shape = (batch, -(-out_size[0] // tile[0]), -(-out_size[1] // tile[1]))
    if tiles.dtype != torch.uint8 or tuple(tiles.shape) != maps_shape or (
        rows is not None and (rows.dtype != torch.uint8 or tuple(rows.shape) != (batch, out_size[0]))
    ):
        got_rows = None if rows is None else (rows.dtype, tuple(rows.shape))
        raise ValueError(f"native {caller} needs uint8 maps {maps_shape} and {(batch, out_size[0])}, got "
                         f"{tiles.dtype} {tuple(tiles.shape)} and {got_rows}")
    return tiles.contiguous(), None if rows is None else rows.contiguous()


def computed(
    tiles: torch.Tensor, rows: torch.Tensor, out_size: Pair, tile: Pair, area: int, group_out: int
) -> list[int]:
    """Per image, the outputs :func:`execute` computes for these maps: its vectors' lanes, or the
    active outputs where its kernel for this layer computes pixel by pixel.

    Args:
        tiles: uint8 ``(B, ceil(H_out / th), ceil(W_out / tw))`` on the CPU, non-zero where active.
        rows: uint8 ``(B, H_out)`` on the CPU.
        out_size: ``(H_out, W_out)``.
        tile: ``(th, tw)``.
        area: the layer's kernel positions ``kh * kw``.
        group_out: its output channels per group.

    Raises:
        ValueError: the maps are not uint8 of those shapes.
    """
    tiles, rows = _checked_maps("computed", tiles, rows, tiles.shape[0], out_size, tile)
    counts = np.empty(tiles.shape[0], dtype=np.int64)
    library().zeroskip_computed(
        tiles.data_ptr(), rows.data_ptr(), tiles.shape[0], *out_size, tiles.shape[1], tiles.shape[2], *tile, area,
        group_out, counts.ctypes.data,
    )
    return counts.tolist()


def max_pool(
    x: torch.Tensor,
    out: torch.Tensor,
    kernel: Pair,
    stride: Pair,
    dilation: Pair,
    pad: Pair,
    activity: torch.Tensor,
    background: tuple[torch.Tensor, tuple[int, int], tuple[int, int]],
) -> bool:
    """Write every element of ``out`` once: ``F.max_pool2d`` of ``x`` (the same bits, NaN included)
    where ``activity`` marks the output active, the background elsewhere; one parallel pass.

    Args:
        x: input ``(B, C, H, W)``, any strides.
        out: output ``(B, C, H_out, W_out)``, any strides that do not overlap; its size says where
            the windows end (``ceil_mode``).
        kernel, stride, dilation, pad: per axis (rows, columns); ``pad`` is the leading padding,
            which counts as ``-inf``.
        activity: uint8 ``(B, 1, H_out, W_out)``, non-zero where active.
        background: ``(core, rows, cols)``: a ``(Bb, C, h, w)`` core read through border bands, as
            :func:`execute` reads it.

    Returns:
        Whether ``out`` was written: ``False`` where the native code does not apply (no library,
        not float32 on the CPU, a failed allocation), and the caller pools with torch.

    Raises:
        ValueError: ``activity`` or the core does not fit ``out``.
    """
    source = _activity_map(activity)
    if source is None or not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (x, out)):
        return False
    core, rows, cols = background
    core = core.to(torch.float32).contiguous()
    batch, channels, *out_size = out.shape
    # The C code trusts these shapes: a mismatch would be read out of bounds.
    core_size = [n if sum(bands) >= n else bands[0] + 1 + bands[1] for n, bands in zip(out_size, (rows, cols))]
    if tuple(source.shape) != (batch, 1, *out_size) or tuple(core.shape[1:]) != (channels, *core_size) or (
        tuple(x.shape[:2]) != (batch, channels)
    ):
        raise ValueError(f"native max_pool needs activity {(batch, 1, *out_size)} and a core (Bb, {channels}, "
                         f"{core_size[0]}, {core_size[1]}) for input {tuple(x.shape)}, got {tuple(source.shape)} "
                         f"and {tuple(core.shape)}")
    failed = library().zeroskip_max_pool(
        x.data_ptr(), *x.shape, *x.stride(), out.data_ptr(), *out_size, *out.stride(),
        *kernel, *stride, *dilation, *pad, source.data_ptr(), source.stride(0), source.stride(2),
        core.data_ptr(), core.shape[0], *core.shape[2:], *rows, *cols, torch.get_num_threads(),
    )
    return not failed


def thread_limit() -> int:
    """The threads the native code's short parallel passes take now, or 0 when they take all that
    ``torch.get_num_threads()`` says: after threads began a pass late (other work held the cores),
    the next short passes run on those that were on time for a while (``_parallel.c``)."""
    native = library()
    return 0 if native is None else native.zeroskip_parallel_limit()


def executes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the native executor runs this call: float32 on the CPU, where the library is built."""
    return x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu" and (
        library() is not None
    )


def execute(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    geometry: ConvGeometry,
    tiles: torch.Tensor,
    tile: Pair,
    rows: torch.Tensor | None,
    background: tuple[torch.Tensor, tuple[int, int], tuple[int, int]],
    zeroed: tuple[int, int] = (0, 0),
    epilogue: tuple[torch.Tensor, torch.Tensor, bool] | None = None,
) -> bool:
    """Write every output of ``out`` once: the convolution where ``tiles`` (and ``rows``) mark
    outputs to compute, the background elsewhere; one parallel pass over balanced work items.

    The executor reads every weight (packing them) whenever it computes anything, and sees there
    whether they are finite: a caller that checks nothing else needs to check the weights only for
    a call that computes nothing.

    Args:
        x: float32 input ``(B, C, H, W)``, any strides.
        out: float32 output ``(B, C_out, H_out, W_out)``, any strides.
        tiles: uint8 ``(B, ceil(H_out / th), ceil(W_out / tw))``, the tiles of ``tile`` outputs to compute.
        rows: uint8 ``(B, H_out)``: output rows outside it are not computed (``None``: every row may be).
        background: ``(core, rows, cols)``: a contiguous ``(Bb, C_out, h, w)`` core read through
            border bands ``rows = (top, bottom)`` and ``cols = (left, right)`` (see
            :class:`zeroskip._background.Background`); image ``b`` reads core image ``b % Bb``.
        zeroed: addresses ``[start, end)`` of ``out``'s memory that reads as +0.0: +0.0
            background values are not written there.
        epilogue: ``(scale, shift, relu)``: every computed value ``v`` is written as
            ``fma(v, scale[c], shift[c])``, then ``max(., 0)`` if ``relu`` (float32 ``(C_out,)``,
            contiguous); ``background`` is given after it.

    Returns:
        ``False`` if a bias value or a weight it read is Inf or NaN: ``out`` is then not dense's (in
        dense ``0 * inf`` is NaN everywhere the weight reaches), and the caller must discard it.

    Raises:
        ValueError: the maps are not uint8 of those shapes.
        MemoryError: the executor could not allocate its per-thread buffers.
    """
    g = geometry
    tiles, rows = _checked_maps("execute", tiles, rows, g.batch, (g.out_height, g.out_width), tile)
    weight = weight.detach().contiguous()
    core, (top, bottom), (left, right) = background
    bias_ = None if bias is None else bias.detach().contiguous()
    group_in = g.in_channels // g.groups
    scale, shift, relu = epilogue if epilogue is not None else (None, None, False)
    if scale is not None and not (scale.is_contiguous() and shift.is_contiguous() and scale.dtype == shift.dtype
                                  == torch.float32 and scale.numel() == shift.numel() == g.out_channels):
        raise ValueError(f"native execute needs float32 contiguous epilogue coefficients of {g.out_channels}, got "
                         f"{scale.dtype} {tuple(scale.shape)} and {shift.dtype} {tuple(shift.shape)}")
    job = _abi.Job(
        x.data_ptr(), *x.shape, *x.stride(), g.groups, *g.kernel, *g.stride, *g.dilation, g.pad_top, g.pad_left,
        g.out_height, g.out_width, weight.data_ptr(), g.out_channels // g.groups, group_in,
        # The weights of one output channel, from the geometry: indexing the tensor costs a view.
        group_in * g.kernel[0] * g.kernel[1], None if bias_ is None else bias_.data_ptr(),
        None if scale is None else scale.data_ptr(), None if shift is None else shift.data_ptr(), int(relu),
        out.data_ptr(), *out.stride(),
        tiles.data_ptr(), tiles.shape[1], tiles.shape[2], *tile, None if rows is None else rows.data_ptr(),
        _KERNEL, core.data_ptr(), core.shape[0], core.shape[2], core.shape[3], top, bottom, left, right, *zeroed,
    )
    status = library().zeroskip_execute(ctypes.byref(job), torch.get_num_threads())
    if status & _OUT_OF_MEMORY:
        raise MemoryError("zeroskip's native executor could not allocate its work buffers")
    return not status & _NOT_FINITE
