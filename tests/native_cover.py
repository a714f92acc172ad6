"""What the native executor writes around its plan, as the tests check it (numpy only: the ASan
harness imports it without PyTorch).

The executor computes a row's active columns in vectors; a run of active columns that begins within
the vector lanes of the row's last vector is begun by that vector, which computes the columns between
the two runs too (``run_start`` in ``zeroskip/engine/_execute.c``). Those columns get the convolution,
exact like any computed output, instead of the background.
"""

from __future__ import annotations

import numpy as np

# The widest vector the executor is built with: 16 float32 lanes (AVX-512).
LANES = 16


def reachable(planned: np.ndarray) -> np.ndarray:
    """Bool, shaped like ``planned`` (``(..., W)``): the columns that a vector beginning at a planned
    column of the same row can reach (the planned ones included)."""
    reach = planned.copy()
    for shift in range(1, min(LANES, planned.shape[-1])):
        reach[..., shift:] |= planned[..., :-shift]
    return reach


def written(out: np.ndarray, planned: np.ndarray, computed: np.ndarray, skipped: np.ndarray) -> np.ndarray:
    """What the executor must have written: ``computed`` where ``planned``, ``skipped`` (the
    background) beyond the vectors' reach, and within it whichever of the two ``out`` holds (by
    closeness to ``computed``, so that a wrong value still fails the comparison with ``skipped``).

    Args:
        out: the executor's output ``(B, C, H, W)``.
        planned: bool, broadcastable to ``out``: the active tiles of active rows.
        computed, skipped: broadcastable to ``out``.
    """
    planned = np.broadcast_to(planned, out.shape)
    near = reachable(planned) & np.isclose(out, computed, rtol=1e-4, atol=1e-4, equal_nan=True)
    return np.where(planned | near, computed, skipped)
