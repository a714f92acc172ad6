"""A competing busy process for the contention scenario, and how busy the machine was around each run.

Video pipelines never run alone (decoding, background subtraction, other streams), and zeroskip's many
short parallel operators each wait for a descheduled thread, so the suite also times the workloads
beside one process spinning on one core. The process is bounded twice: it exits by itself after a
time limit, or as soon as its standard input closes (the suite ended, however: an exception, Ctrl-C,
even a kill of the suite), and the suite ends it on leaving :func:`busy_process`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..machine import Load, busy, load_mark, load_since, measure_load

# The competitor: one pure-Python loop, on whichever core the scheduler gives it.
_SPIN = """
import os, sys, threading, time
deadline = time.monotonic() + float(sys.argv[1])
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
while time.monotonic() < deadline:
    pass
"""


def _children_cpu_s() -> float | None:
    """CPU seconds of this process's ended children, ``None`` where the platform does not say."""
    try:
        import resource
    except ImportError:
        return None
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, ``None`` where the system has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


@dataclass
class RunLoad:
    """How busy the machine was around one run: filled in by :func:`observe`.

    Attributes:
        competitor: whether the busy process ran beside the work.
        others_before: cores' worth of CPU other processes used just before the run (over 0.2 s).
        others: the same during the run, the busy process included (:func:`zeroskip.machine.load_since`).
        competitor_cpu: CPU time the busy process got, in cores (1.0: a whole core all along).
        load_average_end: the load averages when the run ended.
    """

    competitor: bool
    others_before: float | None = None
    others: float | None = None
    competitor_cpu: float | None = None
    load_average_end: list[float] | None = None


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(OSError):
            process.stdin.close()  # the competitor exits on end of input
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def busy_process(limit_s: float) -> Iterator[subprocess.Popen]:
    """Run the block beside one process spinning on one core for at most ``limit_s`` seconds.

    The process is ended on leaving the block (also on an exception or Ctrl-C), at interpreter exit
    if that is skipped, and by itself when the suite's end closes its standard input.

    Yields:
        The busy process.
    """
    process = subprocess.Popen([sys.executable, "-c", _SPIN, str(limit_s)], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(_end, process)
    try:
        time.sleep(0.05)  # let it reach its loop
        yield process
    finally:
        _end(process)
        atexit.unregister(_end)


@contextlib.contextmanager
def observe(competitor_limit_s: float | None) -> Iterator[RunLoad]:
    """Run the block quietly (``competitor_limit_s`` ``None``) or beside :func:`busy_process`, and record
    the load: other processes' CPU just before and during the block, the busy process's share.

    Yields:
        The :class:`RunLoad` of the block, filled in when the block ends.
    """
    load = RunLoad(competitor=competitor_limit_s is not None, others_before=measure_load(0.2).others)
    children = _children_cpu_s()
    started = time.perf_counter()
    with busy_process(competitor_limit_s) if load.competitor else contextlib.nullcontext():
        mark = load_mark()
        yield load
        load.others = load_since(mark).others
        load.load_average_end = load_average()
    if load.competitor and children is not None:
        load.competitor_cpu = (_children_cpu_s() - children) / (time.perf_counter() - started)


def busy_note(meta: dict, runs: Sequence[dict]) -> str:
    """A warning when other processes competed for the cores outside the contention runs, else ``""``.

    Busy means, as for ``zeroskip video`` (:func:`zeroskip.machine.busy`): other processes left fewer
    free cores than the run's threads, during a quiet run or just before any run.

    Args:
        meta: the run's metadata (cores).
        runs: the run records (``threads``, ``load``, ``others_before``, ``others``).
    """
    cores = meta["cpu_affinity"] or meta["cpu_count"] or 1
    seen = [(r["others"] if r["load"] == "quiet" else None, r["threads"]) for r in runs]
    seen += [(r["others_before"], r["threads"]) for r in runs]
    crowded = [others for others, threads in seen if busy(Load(others, cores, "/proc/stat"), threads)]
    if not crowded:
        return ""
    return (f"the machine was busy: other processes used up to {max(crowded):.1f} of {cores} cores during or"
            " just before quiet runs. Timings are unreliable, multi-threaded zeroskip ones most (its many short"
            " parallel operators each wait for descheduled threads); rerun on a quiet machine.")
