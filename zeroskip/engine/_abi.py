"""The native executor's job structure (``exec_job`` of ``_execute.c``), field for field.

Kept apart from :mod:`zeroskip.engine.native` so that it loads without PyTorch: the memory-safety
test drives the executor built with AddressSanitizer from numpy alone.
"""

from __future__ import annotations

import ctypes

_I = ctypes.c_int64
_P = ctypes.c_void_p


class Job(ctypes.Structure):
    """``exec_job``: input, geometry, weights, output, plan, background, then the executor's own."""

    _fields_ = [
        ("x", _P),
        *[(name, _I) for name in (
            "batch channels height width xs_b xs_c xs_h xs_w groups kh kw stride_h stride_w dil_h dil_w"
            " pad_top pad_left out_h out_w"
        ).split()],
        ("weight", _P),
        *[(name, _I) for name in "group_out group_in k".split()],
        ("bias", _P),
        ("scale", _P),
        ("shift", _P),
        ("relu", _I),
        ("out", _P),
        *[(name, _I) for name in "os_b os_c os_h os_w".split()],
        ("tiles", _P),
        *[(name, _I) for name in "tiles_i tiles_j tile_h tile_w".split()],
        ("rows", _P),
        ("by_channels", _I),
        ("core", _P),
        *[(name, _I) for name in "core_b core_h core_w band_top band_bottom band_left band_right".split()],
        ("zero_start", ctypes.c_size_t),
        ("zero_end", ctypes.c_size_t),
        ("item_image", _P),
        ("item_start", _P),
        ("item_end", _P),
        *[(name, _I) for name in (
            "items next phase_w buffer_rows item_rows item_pixels blocks block chunks chunk bias_in_sum"
        ).split()],
        ("panels", _P),
        ("panel_state", _P),
        ("tap_input", _P),
        ("tap_weight", _P),
        ("failed", ctypes.c_int),
    ]


def declare(library: ctypes.CDLL) -> None:
    """Argument and result types of the executor's entry point."""
    library.zeroskip_execute.restype = ctypes.c_int
    library.zeroskip_execute.argtypes = [ctypes.POINTER(Job), ctypes.c_int]
