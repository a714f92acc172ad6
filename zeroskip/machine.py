"""What the machine is doing besides zeroskip, and what it means for a timed run.

Timings mean little on a busy machine, and zeroskip's many short parallel operators suffer from
busy cores far more than one long dense convolution does (a waiting thread holds up every
operator). :func:`measure_load` tells how much CPU other processes use (:func:`load_mark` and
:func:`load_since` over a stretch of work), :func:`busy_warning` turns
that into one line of advice before timing, and :func:`speedup_notes` explains a run's speed-ups
after it, with the likely cause and the option to try when zeroskip measured slower than dense.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

# Other processes may use this many cores beyond those zeroskip's threads leave free before the
# machine counts as busy: a shell, an editor or a browser tab use a few percent of one.
_BUSY_SLACK = 0.5
# Below these, a run is "too dense" or "too small" for skipping to pay (see speedup_notes).
_DENSE_ACTIVE_FRACTION = 0.5
_SPARSE_INPUT_PERCENT = 80.0
_SMALL_FRAME_PIXELS = 320 * 240


@dataclass(frozen=True)
class Load:
    """Other processes' CPU use.

    Attributes:
        others: cores' worth of CPU time other processes used (1.0: one core fully busy), or
            ``None`` when it cannot be measured here.
        cores: cores this process may run on.
        source: ``"/proc/stat"`` (measured over a short window), ``"load average"`` (the 1-minute
            average, where /proc/stat is missing) or ``"unavailable"``.
    """

    others: float | None
    cores: int
    source: str


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _busy_seconds(cpus: set[int], path: str) -> float | None:
    """Seconds the given CPUs have spent on anything but idling since boot, from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    try:
        with open(path) as handle:
            for line in handle:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                    continue
                # user nice system idle iowait irq softirq steal (guest time is already in user).
                values = [int(v) for v in fields[:8]]
                busy += sum(values) - values[3] - values[4]
    except (OSError, ValueError, IndexError):
        return None
    return busy / tick


@dataclass(frozen=True)
class LoadMark:
    """A reading to measure other processes' CPU use from, until :func:`load_since` (over a window of
    work, where :func:`measure_load` measures over a pause)."""

    busy: float | None
    own: float
    start: float
    cpus: frozenset[int]
    stat_path: str


def load_mark(*, stat_path: str = "/proc/stat") -> LoadMark:
    """Start measuring other processes' CPU use (see :func:`load_since`).

    Args:
        stat_path: the kernel's CPU statistics (a parameter for tests).
    """
    cores = usable_cores()
    cpus = frozenset(os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(cores))
    return LoadMark(_busy_seconds(set(cpus), stat_path), time.process_time(), time.perf_counter(), cpus, stat_path)


def load_since(mark: LoadMark) -> Load:
    """Other processes' CPU use on the cores this process may use, since ``mark``.

    On Linux: the busy time of those cores in ``/proc/stat`` since ``mark``, less this process's own
    CPU time. Elsewhere: the 1-minute load average (counts runnable processes, including this one).
    Where neither exists (Windows): unknown.
    """
    cores = usable_cores()
    if mark.busy is not None:
        after = _busy_seconds(set(mark.cpus), mark.stat_path)
        if after is not None:
            elapsed = time.perf_counter() - mark.start
            others = (after - mark.busy - (time.process_time() - mark.own)) / elapsed
            return Load(min(float(cores), max(0.0, others)), cores, "/proc/stat")
    if hasattr(os, "getloadavg"):
        return Load(min(float(cores), os.getloadavg()[0]), cores, "load average")
    return Load(None, cores, "unavailable")


def measure_load(window: float = 0.3, *, stat_path: str = "/proc/stat") -> Load:
    """Measure other processes' CPU use on the cores this process may use, over ``window`` seconds
    (the call sleeps that long where ``/proc/stat`` exists; see :func:`load_since`).

    Args:
        window: seconds to measure over.
        stat_path: the kernel's CPU statistics (a parameter for tests).
    """
    if window <= 0:
        raise ValueError(f"`window` must be positive, got {window!r}")
    mark = load_mark(stat_path=stat_path)
    if mark.busy is not None:
        time.sleep(window)
    return load_since(mark)


def busy(load: Load, threads: int) -> bool:
    """Whether other processes leave fewer free cores than ``threads`` (with a little slack)."""
    return load.others is not None and load.others > load.cores - min(threads, load.cores) + _BUSY_SLACK


def busy_warning(load: Load, threads: int) -> str | None:
    """One line of advice when the machine is busy for a run on ``threads`` threads, else ``None``."""
    if not busy(load, threads):
        return None
    advice = "try --threads 1, or run on a quiet machine" if threads > 1 else "run it on a quiet machine"
    return (
        f"warning: the machine is busy: other processes use {load.others:.1f} of {load.cores} cores"
        f" ({load.source}); zeroskip on {threads} thread{'s' if threads > 1 else ''} will wait on them and"
        f" its timings will be noisy: {advice}"
    )


def speedup_notes(summary: dict, load: Load | None = None) -> list[str]:
    """Lines that explain a ``zeroskip demo``/``video`` summary's speed-ups and, when zeroskip
    measured slower than dense, the likely causes with the option to try, most likely first.

    Args:
        summary: as returned by :func:`zeroskip.video.run` (``speedup``, ``medians``, ``totals``,
            ``source`` with the frame size, ``environment`` with the thread count).
        load: other processes' CPU use measured before the run, if known.
    """
    medians, totals = summary["medians"], summary["totals"]
    batches = totals["batches"]
    lines = [
        f"overall: total dense time / total zeroskip time over {'the' if batches == 1 else 'all'} {batches}"
        f" batch{'es' if batches > 1 else ''}; median per batch: the typical batch's speed-up (a few slow"
        " batches, at a busy moment or a busier scene, move overall but not the median)"
    ]
    if min(summary["speedup"], medians["speedup"]) >= 1.0:
        return lines
    threads = summary["environment"]["torch_threads"]
    pixels = summary["source"]["frame_width"] * summary["source"]["frame_height"]
    causes = []
    if load is not None and busy(load, threads):
        causes.append(
            f"the machine was busy (other processes used {load.others:.1f} of {load.cores} cores) and zeroskip"
            f" ran on {threads} threads: try --threads 1, or a quiet machine"
            if threads > 1
            else f"the machine was busy (other processes used {load.others:.1f} of {load.cores} cores):"
            " run it on a quiet machine"
        )
    active, zero = medians["active_fraction"], medians["sparsity_before"]
    if active > _DENSE_ACTIVE_FRACTION and zero < _SPARSE_INPUT_PERCENT:
        causes.append(
            f"the input is too dense: {zero:.0f}% of it was zero and zeroskip computed {active:.0%} of the dense"
            " work; skipping pays when most of each frame is exactly zero: try a stricter mask (--subtractor)"
        )
    elif active > _DENSE_ACTIVE_FRACTION:
        causes.append(
            f"the non-zero pixels are spread out: {zero:.0f}% of the input was zero, yet every output whose"
            f" window holds one must be computed, {active:.0%} of the dense work"
        )
    if pixels < _SMALL_FRAME_PIXELS:
        causes.append(
            f"the frames are small ({summary['source']['frame_width']}x{summary['source']['frame_height']}):"
            " zeroskip's fixed cost per call outweighs the work it skips: try larger frames"
            " (demo: --size 1280x720) or a larger --batch-size"
        )
    if not causes and threads > 1:
        causes.append(
            f"zeroskip ran on {threads} threads, where its serial work (planning, short operators, fills)"
            " gains less than dense does: try --threads 1"
        )
    if not causes:
        causes.append("timing noise: run it again, or on a longer clip")
    lines.append("zeroskip measured slower than dense; likely: " + "; or ".join(causes))
    return lines
