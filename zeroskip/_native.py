"""The native activity check: ``_scan.c``, built on first use with the system C compiler.

The build needs only a C compiler (no PyTorch headers, no ninja) and takes well under a second;
the library is cached per source version under ``$XDG_CACHE_HOME/zeroskip`` (or ``~/.cache``).
Without a compiler, or with ``ZEROSKIP_NATIVE=0``, every caller uses the pure-torch check instead,
which finds the same or more active tiles (it rounds windows out to activity cells).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from ._geometry import ConvGeometry, Pair

_SOURCE = Path(__file__).with_name("_scan.c")
_ELEMENT_SIZES = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4, torch.float64: 8}
# Below this many input bytes, starting a second thread costs more than it saves.
_PARALLEL_MIN_BYTES = 1 << 20

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failure: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "zeroskip"


def _build() -> ctypes.CDLL:
    source = _SOURCE.read_bytes()
    digest = hashlib.sha256(source + platform.machine().encode()).hexdigest()[:16]
    target = _cache_dir() / f"scan-{digest}.so"
    if not target.exists():
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise OSError("no C compiler (cc, gcc) on PATH")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built beside the target and renamed into place, so that concurrent builds never load half a file.
        handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(handle)
        try:
            subprocess.run(
                [compiler, "-O3", "-shared", "-fPIC", "-pthread", str(_SOURCE), "-o", partial],
                check=True, capture_output=True, timeout=120,
            )
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    library = ctypes.CDLL(str(target))
    function = library.zeroskip_scan
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 8 + [ctypes.c_int] + [ctypes.c_int64] * 11 + [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
    ]
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
                    _failure = f"native check unavailable ({error}); using the torch check"
    return _library


def unavailable_reason() -> str | None:
    """Why the native check is not used, or ``None`` when it is."""
    library()
    return _failure


def scan(
    x: torch.Tensor, geometry: ConvGeometry, tile: Pair, row_step: int = 1
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Which output tiles and which output rows have a non-zero value in their receptive field.

    Args:
        x: input ``(B, C, H, W)``; CPU, floating point, any strides.
        tile: output tile ``(th, tw)``.
        row_step: scan only every ``row_step``-th row of tiles (a sample); the flags of the tiles
            and output rows of the others are ``False``.

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
    new = torch.empty if row_step == 1 else torch.zeros
    tiles = new((x.shape[0], tiles_i, tiles_j), dtype=torch.bool)
    rows = new((x.shape[0], g.out_height), dtype=torch.bool)
    threads = torch.get_num_threads() if x.numel() * size >= _PARALLEL_MIN_BYTES else 1
    failed = native.zeroskip_scan(
        # data_ptr() already points at the storage offset of a view.
        x.data_ptr(), *x.shape, *x.stride(), size,
        tiles_i, tile[0], g.stride[0], g.pad_top, g.window[0], g.out_height,
        tiles_j, tile[1], g.stride[1], g.pad_left, g.window[1],
        tiles.data_ptr(), rows.data_ptr(), row_step, threads,
    )
    return None if failed else (tiles, rows)
