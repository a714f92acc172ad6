"""A competing busy process for the contention scenario, and how busy the machine was.

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


def cpu_counters() -> tuple[int, int] | None:
    """``(busy, total)`` jiffies of all cores since boot (``/proc/stat``), ``None`` off Linux."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_fraction(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The fraction of all cores' time that was busy between two :func:`cpu_counters` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, ``None`` where the system has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


@dataclass
class Load:
    """How busy the machine was while a block of work ran: filled in on leaving :func:`busy_process`
    or :func:`quiet`.

    Attributes:
        competitor: whether a busy process ran beside the work.
        machine_busy: fraction of all cores' time busy (the work itself included), ``None`` off Linux.
        competitor_cpu: CPU time the busy process got, in cores (1.0: a whole core all along).
        load_average_end: the load averages when the block ended.
        pid: the busy process's id.
    """

    competitor: bool
    machine_busy: float | None = None
    competitor_cpu: float | None = None
    load_average_end: list[float] | None = None
    pid: int | None = None


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
def busy_process(limit_s: float) -> Iterator[Load]:
    """Run the block beside one process spinning on one core for at most ``limit_s`` seconds.

    The process is ended on leaving the block (also on an exception or Ctrl-C), at interpreter exit
    if that is skipped, and by itself when the suite's end closes its standard input.

    Yields:
        The :class:`Load` of the block, filled in when the block ends.
    """
    load = Load(competitor=True)
    cpu = _children_cpu_s()
    process = subprocess.Popen([sys.executable, "-c", _SPIN, str(limit_s)], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(_end, process)
    load.pid = process.pid
    started, counters = time.perf_counter(), cpu_counters()
    try:
        time.sleep(0.05)  # let it reach its loop
        yield load
        load.machine_busy = busy_fraction(counters, cpu_counters())
        load.load_average_end = load_average()
    finally:
        _end(process)
        atexit.unregister(_end)
    if cpu is not None:
        load.competitor_cpu = (_children_cpu_s() - cpu) / (time.perf_counter() - started)


@contextlib.contextmanager
def quiet() -> Iterator[Load]:
    """Run the block with no competitor, recording how busy the machine was anyway."""
    load, counters = Load(competitor=False), cpu_counters()
    yield load
    load.machine_busy = busy_fraction(counters, cpu_counters())
    load.load_average_end = load_average()


def busy_note(meta: dict, runs: Sequence[dict]) -> str:
    """A warning when other processes competed for the cores outside the contention runs, else ``""``.

    Other processes used at least ``machine_busy * cores - threads`` cores during a quiet run (the
    run's own threads account for at most ``threads``), which shows where the threads leave cores
    free; the 1-minute load average when the run started catches the rest.

    Args:
        meta: the run's metadata (cores, starting load average).
        runs: the run records (``threads``, ``load``, ``machine_busy``).
    """
    cores = meta["cpu_affinity"] or meta["cpu_count"] or 1
    others = max((r["machine_busy"] * cores - r["threads"] for r in runs
                  if r["load"] == "quiet" and r["machine_busy"] is not None), default=0.0)
    start = (meta["load_average_start"] or [0.0])[0]
    if others <= 0.5 and start <= cores:
        return ""
    return (f"the machine was busy: other processes used at least {others:.1f} of {cores} cores during quiet runs"
            f" (1-minute load average {start:.1f} at the start). Timings are unreliable, multi-threaded zeroskip"
            " ones most (its many short parallel operators each wait for descheduled threads); rerun on a quiet"
            " machine.")
