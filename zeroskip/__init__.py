"""zeroskip: exact convolution inference that skips the all-zero parts of sparse images and video."""

from __future__ import annotations

from ._profiler import CallRecord, Profile, profile
from .conv import MODES, SparseConv2d, conv2d
from .convert import densify_, sparsify_

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "CallRecord",
    "Profile",
    "SparseConv2d",
    "conv2d",
    "densify_",
    "profile",
    "sparsify_",
    "__version__",
]
