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


def balanced_orders(count: int) -> list[list[int]]:
    """Orders of ``range(count)`` in which every item follows every other equally often (Williams'
    design: ``count`` orders, twice that for an odd count).

    A function's time depends on what ran just before it: whether the memory it allocates is still
    mapped, what the caches hold. Rotating one order keeps every function behind the same other
    (dense always after the fill, which frees an output's worth of mapped memory for it, auto
    always after tiles); these orders put each behind each."""
    first = [0] + [(k + 1) // 2 if k % 2 else count - k // 2 for k in range(1, count)]
    orders = [[(item + shift) % count for item in first] for shift in range(count)]
    return orders + [order[::-1] for order in orders] if count % 2 else orders


def measure(functions: dict[str, Callable[[], object]], repeats: int, min_block_s: float) -> dict[str, Timing]:
    """Time ``functions`` against each other: warm up, then alternate timed blocks of each.

    Each function runs twice untimed (first-call costs such as oneDNN primitive creation stay out),
    and the second run sizes its block: as many calls as last ``min_block_s``. Then ``repeats``
    rounds time one block of every function, round ``r`` in the order ``r`` of
    :func:`balanced_orders` (cycling through them), so that no function always runs right after the
    same other. The garbage collector is off while timing, as in ``timeit``.

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
    orders = balanced_orders(len(names))
    samples: dict[str, list[float]] = {name: [] for name in names}
    collecting = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(repeats):
            for name in (names[index] for index in orders[round_ % len(orders)]):
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


