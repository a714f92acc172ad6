"""glibc's heap: as users get it or kept warm for timing (:func:`use_heap`), or made to follow live memory
so that the resident set's high-water mark measures a call's peak (:func:`pin_malloc`, :func:`peak_memory`)."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
from collections.abc import Callable

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Memory measurement: glibc serves blocks at least this large with their own mapping, returned to the
# system when freed.
_MMAP_THRESHOLD = 128 << 10
# Timing: blocks below this come from the heap, which keeps up to this much free memory.
_TIMING_THRESHOLD = 1 << 30
# The heap modes workloads are timed in, in the order a run takes them: once this process has set a
# threshold, glibc never goes back to its dynamic one, so the default heap comes first.
HEAP_MODES = ("default", "pinned")
# Whether this process has set glibc's thresholds (the default heap is then no longer glibc's own).
_changed = False


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {key}")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)


def _pin_thresholds(threshold: int) -> str:
    """Fix glibc's mmap and trim thresholds at ``threshold`` bytes. ``""`` when done, else why not."""
    global _changed
    try:
        libc = _libc()
        pinned = libc.mallopt(_M_MMAP_THRESHOLD, threshold) and libc.mallopt(_M_TRIM_THRESHOLD, threshold)
    except (OSError, AttributeError) as error:
        return f"needs glibc mallopt ({error})"
    if not pinned:
        return "glibc mallopt refused the thresholds"
    _changed = True
    return ""


def pin_timing_heap() -> str:
    """Keep the heap warm for timing: glibc's mmap and trim thresholds pinned to 1 GiB.

    With glibc's defaults, a block above the mmap threshold (32 MiB at most, e.g. oneDNN's scratch
    for a large dense convolution) is mapped fresh on every call and its pages faulted in again, and
    the dynamic threshold makes that depend on the process's history: on the project's machine dense
    ``F.conv2d`` of the W1 layer took about 3x as long as with a warm heap, and every speed-up swung
    2-3x from run to run. Pinned, such blocks are served from the heap and reused, so the dense
    baseline is measured at its best and speed-ups err on the low side. The ``"pinned"`` mode of
    :func:`use_heap`.

    Returns:
        The allocator state, for the metadata.
    """
    reason = _pin_thresholds(_TIMING_THRESHOLD)
    if reason:
        return f"default (thresholds not pinned: {reason})"
    return "glibc, mmap/trim thresholds pinned to 1 GiB for timing"


def use_heap(mode: str) -> tuple[bool, str]:
    """Put the heap in ``mode`` (one of :data:`HEAP_MODES`) for the timings that follow.

    ``"default"`` is the allocator as users get it: glibc's own dynamic mmap threshold, whose state
    depends on what the process freed before. ``"pinned"`` keeps the heap warm (:func:`pin_timing_heap`)
    for noise control. A process that has already set glibc's thresholds cannot have its dynamic
    threshold back: ``"default"`` then restores glibc's initial values, fixed, and says so.

    Returns:
        ``(whether the mode is in effect, the allocator state for the metadata or why not)``.

    Raises:
        ValueError: ``mode`` is not a heap mode.
    """
    if mode == "pinned":
        state = pin_timing_heap()
        return not state.startswith("default"), state
    if mode != "default":
        raise ValueError(f"`mode` must be one of {', '.join(HEAP_MODES)}, got {mode!r}")
    if platform.libc_ver()[0] != "glibc":
        return True, "the platform's default allocator (not glibc)"
    if not _changed:
        return True, "glibc defaults (dynamic mmap threshold)"
    reason = _pin_thresholds(_MMAP_THRESHOLD)
    if reason:
        return False, f"glibc defaults cannot be restored: {reason}"
    return True, ("glibc's initial thresholds (128 KiB) restored, without the dynamic mmap threshold: thresholds"
                  " were set earlier in this process")


def pin_malloc() -> str:
    """Make the resident set follow live memory, so that its high-water mark measures a call's peak.

    glibc raises its mmap threshold as large blocks are freed and then recycles them from the heap,
    which hides a new allocation from the resident set. Fixing the thresholds gives every block of
    128 KiB or more its own mapping, unmapped when freed. Called once, after all timing is done.

    Returns:
        ``""`` when peak memory can be measured here, else why not.
    """
    if not (os.path.exists("/proc/self/clear_refs") and os.path.exists("/proc/self/status")):
        return "needs Linux /proc/self/clear_refs"
    reason = _pin_thresholds(_MMAP_THRESHOLD)
    if reason:
        return reason
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError) as error:
        return f"needs glibc malloc_trim ({error})"
    return ""


def peak_memory(function: Callable[[], object], calls: int = 3) -> int:
    """Bytes by which the process's resident set rose at its highest during ``function()``.

    Returns free heap pages to the system (``malloc_trim``), resets the kernel's high-water mark
    (``/proc/self/clear_refs``), runs ``function`` and reads the mark back, so it sees every page the
    call touches: PyTorch's allocator, oneDNN's buffers and zeroskip's own mappings alike. The
    smallest rise of ``calls`` calls: a call's own peak is the same every time, and a larger rise
    comes from pages the process took back between the reads (runs of the benchmark measured one
    call's output more or less for dense and zeroskip alike, from one session to the next). Run
    :func:`pin_malloc` first.
    """
    rises = []
    for _ in range(calls):
        gc.collect()
        _libc().malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = _status_bytes("VmRSS")
        function()
        rises.append(max(0, _status_bytes("VmHWM") - before))
    return min(rises)


