"""Timing functions against each other (:func:`measure`, :class:`Timing`) and the torch thread count."""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

# At most this many calls make one timed block, however short the call.
_MAX_CALLS = 1000



@dataclass(frozen=True)
class Timing:
    """Time per call of one function in milliseconds: median, quartiles and extremes over the blocks."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    blocks: int
    calls_per_block: int

    @classmethod
    def of(cls, seconds: Sequence[float], calls: int) -> Timing:
        ms = sorted(s * 1e3 for s in seconds)
        q1, q3 = statistics.quantiles(ms, n=4, method="inclusive")[::2] if len(ms) > 1 else (ms[0], ms[0])
        return cls(statistics.median(ms), q1, q3, ms[0], ms[-1], len(ms), calls)


def measure(functions: dict[str, Callable[[], object]], repeats: int, min_block_s: float) -> dict[str, Timing]:
    """Time ``functions`` against each other: warm up, then alternate timed blocks of each.

    Each function runs twice untimed (first-call costs such as oneDNN primitive creation stay out),
    and the second run sizes its block: as many calls as last ``min_block_s``. Then ``repeats``
    rounds time one block of every function, the order rotating each round so that none always
    runs right after the same other. The garbage collector is off while timing, as in ``timeit``.

    Returns:
        Per function, the :class:`Timing` of one call.
    """
    calls = {}
    for name, function in functions.items():
        function()
        start = time.perf_counter()
        function()
        once = time.perf_counter() - start
        calls[name] = min(_MAX_CALLS, max(1, math.ceil(min_block_s / max(once, 1e-9))))
    names = list(functions)
    samples: dict[str, list[float]] = {name: [] for name in names}
    collecting = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(repeats):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                function, count = functions[name], calls[name]
                start = time.perf_counter()
                for _ in range(count):
                    function()
                samples[name].append((time.perf_counter() - start) / count)
    finally:
        if collecting:
            gc.enable()
    return {name: Timing.of(samples[name], calls[name]) for name in names}


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


