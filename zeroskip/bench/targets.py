"""The speed targets of the project (issue 11), evaluated on one run's results for every thread count and
heap mode that ran."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

# Every zeroskip speed-up beside the busy process at least this fraction of the quiet one at the same
# thread count ...
TARGET_CONTENTION_RATIO = 0.8
# ... and never below 1x where the quiet speed-up is above this.
TARGET_CONTENTION_FLOOR_ABOVE = 1.2
# Dense input (W3 at 100 %, W5 on unmasked frames): zeroskip at most 3 % slower than dense.
TARGET_DENSE_INPUT = 0.97
WORKLOADS_UNDER_CONTENTION = ("W1", "W2", "W5")


@dataclass(frozen=True)
class Target:
    """One target: the rows it reads (``workloads``, ``select``), the figure, and the bar at a thread count.

    The worst selected row of a configuration (thread count and heap mode) decides: the lowest figure
    for an "at least" bar, the highest for an "at most" one.
    """

    text: str
    workloads: tuple[str, ...]
    select: Callable[[dict], bool]
    goal: Callable[[int], float]
    figure: str = "speedup"
    at_least: bool = True
    unit: str = "x"

    def describe(self, threads: int | None) -> str:
        goal = self.goal(threads or 1)
        return f"{self.text} {'>=' if self.at_least else '<='} {goal:g}{self.unit}"


def _batch(size: int) -> Callable[[dict], bool]:
    return lambda row: row["batch"] == size


def _network(model: str, size: tuple[int, int]) -> Callable[[dict], bool]:
    return lambda row: (row["model"], row["input"], tuple(row["size"])) == (model, "masked", size)


def _dense_input(row: dict) -> bool:
    return row.get("input") == "unmasked" or (row.get("pattern") == "blobs" and row.get("density") == 1.0)


def _case(prefix: str) -> Callable[[dict], bool]:
    return lambda row: row["case"].startswith(prefix)


def _every(row: dict) -> bool:
    return True


def _constant(goal: float) -> Callable[[int], float]:
    return lambda threads: goal


TARGETS = (
    Target("W1 batch 1 speed-up", ("W1",), _batch(1), lambda threads: 4.5 if threads == 1 else 4.0),
    Target("W1 batch 16 speed-up", ("W1",), _batch(16), _constant(5.0)),
    Target("W2 batch 1 speed-up", ("W2",), _batch(1), _constant(6.0)),
    Target("W1 and W2 efficiency (speed-up over ideal)", ("W1", "W2"), _every, _constant(0.8), "efficiency", unit=""),
    Target("W5 resnet18 768x576 masked speed-up", ("W5",), _network("resnet18", (576, 768)), _constant(2.0)),
    Target("W5 resnet18 1920x1080 masked speed-up", ("W5",), _network("resnet18", (1080, 1920)), _constant(3.5)),
    Target("dense input (W3 at 100%, W5 unmasked frames) speed-up", ("W3", "W5"), _dense_input,
           _constant(TARGET_DENSE_INPUT)),
    Target("W3 auto's time over the best fixed mode's", ("W3",), _every, _constant(1.10), "auto_vs_best",
           at_least=False),
    Target("W3 auto speed-up at 5% pixel density", ("W3",),
           lambda row: row["pattern"] == "blobs" and row["density"] == 0.05, _constant(2.0)),
    # Issue 12: many cameras.
    Target("W6 whole-pipeline steady frames/s, stem, zeroskip over dense", ("W6",), _case("W6 pipeline stem"),
           _constant(1.8)),
    Target("W6 whole-pipeline steady frames/s, resnet18, zeroskip over dense", ("W6",), _case("W6 pipeline resnet18"),
           _constant(1.4)),
    Target("W6 steady frames/s, 2 Ray workers over one process with the same threads", ("W6",), _case("W6 Ray"),
           _constant(0.9)),
    Target("peak memory of a zeroskip call over the dense call's", ("W1", "W2", "W3", "W4", "W5"),
           lambda row: row.get("memory_ratio") is not None, _constant(1.1), "memory_ratio", at_least=False),
)


def _configurations(rows: Iterable[dict]) -> list[tuple[int, str]]:
    return sorted({(row["threads"], row["heap"]) for row in rows}, key=lambda c: (c[1] != "default", c[0]))


def _entry(target: str, threads: int | None, heap: str | None, measured: float | None, passed: bool,
           shown: str = "-") -> dict:
    status = "NOT RUN" if measured is None else ("PASS" if passed else "FAIL")
    return {"target": target, "threads": threads, "heap": heap, "measured": measured, "shown": shown,
            "status": status}


def _evaluate(target: Target, sections: dict[str, dict]) -> list[dict]:
    rows = [row for name in target.workloads for row in sections.get(name, {}).get("rows", [])
            if row["load"] == "quiet" and target.select(row)]
    entries = []
    for threads, heap in _configurations(rows):
        chosen = [row for row in rows if (row["threads"], row["heap"]) == (threads, heap)]
        worst = (min if target.at_least else max)(chosen, key=lambda row: row[target.figure])
        figure, goal = worst[target.figure], target.goal(threads)
        shown = f"{figure:.2f}{target.unit}" + (f" (worst: {worst['case']}; {len(chosen)} cases)" if len(chosen) > 1
                                                 else "")
        entries.append(_entry(target.describe(threads), threads, heap, figure,
                              figure >= goal if target.at_least else figure <= goal, shown))
    return entries or [_entry(target.describe(None), None, None, None, False)]


def _contention(sections: dict[str, dict], threads: int) -> list[dict]:
    """The contention targets, per heap mode: each busy speed-up against the quiet one at ``threads``."""
    rows = [row for name in WORKLOADS_UNDER_CONTENTION for row in sections.get(name, {}).get("rows", [])]
    quiet = {(row["case"], row["heap"]): row for row in rows if row["load"] == "quiet" and row["threads"] == threads}
    pairs = [(row, quiet[(row["case"], row["heap"])]) for row in rows
             if row["load"] == "busy" and (row["case"], row["heap"]) in quiet]
    ratio_text = (f"W1, W2, W5 speed-up beside a busy process over the quiet one ({threads} threads)"
                  f" >= {TARGET_CONTENTION_RATIO:g}")
    floor_text = (f"W1, W2, W5 speed-up beside a busy process >= 1x where the quiet one is above"
                  f" {TARGET_CONTENTION_FLOOR_ABOVE:g}x")
    entries = []
    for heap in dict.fromkeys(busy["heap"] for busy, _ in pairs):
        here = [(busy, calm) for busy, calm in pairs if busy["heap"] == heap]
        busy, calm = min(here, key=lambda pair: pair[0]["speedup"] / pair[1]["speedup"])
        ratio = busy["speedup"] / calm["speedup"]
        entries.append(_entry(ratio_text, threads, heap, ratio, ratio >= TARGET_CONTENTION_RATIO,
                              f"{ratio:.2f} (worst: {busy['case']}, {busy['speedup']:.2f}x against"
                              f" {calm['speedup']:.2f}x; {len(here)} cases)"))
        fast = [b for b, c in here if c["speedup"] > TARGET_CONTENTION_FLOOR_ABOVE]
        slowest = min(fast, key=lambda row: row["speedup"], default=None)
        shown = (f"{slowest['speedup']:.2f}x (worst: {slowest['case']}; {len(fast)} cases)" if slowest else
                 f"no case above {TARGET_CONTENTION_FLOOR_ABOVE:g}x quietly")
        entries.append(_entry(floor_text, threads, heap, slowest and slowest["speedup"],
                              bool(slowest) and slowest["speedup"] >= 1.0, shown))
    return entries or [_entry(ratio_text, None, None, None, False), _entry(floor_text, None, None, None, False)]


def _cross_stream(sections: dict[str, dict]) -> list[dict]:
    """W6's model stage at batch 16 across streams against W1 at batch 16, per thread count and heap mode."""
    text = "W6 model-stage speed-up, 16 streams at cross-stream batch 16, over W1 batch 16's"
    w1 = {(row["threads"], row["heap"]): row for row in sections.get("W1", {}).get("rows", [])
          if row["load"] == "quiet" and row["batch"] == 16}
    entries = []
    for row in sections.get("W6", {}).get("rows", []):
        reference = w1.get((row["threads"], row["heap"]))
        if row["case"].startswith("W6 model stage stem, 16") and reference is not None:
            ratio = row["speedup"] / reference["speedup"]
            entries.append(_entry(f"{text} >= 1", row["threads"], row["heap"], ratio, ratio >= 1.0,
                                  f"{ratio:.2f} ({row['speedup']:.2f}x against {reference['speedup']:.2f}x)"))
    return entries or [_entry(f"{text} >= 1 (needs W1 with batch 16 and W6)", None, None, None, False)]


def _exactness(rows: Sequence[dict]) -> dict:
    # Rows that compare nothing (W6's pipeline runs, one model each) have exact None.
    rows = [row for row in rows if row["exact"] is not None]
    wrong = [f"{row['case']} ({row['threads']}t {row['heap']} {row['load']})" for row in rows if not row["exact"]]
    return _entry("every zeroskip output equals dense (assert_close)", None, None, len(rows) if rows else None,
                  not wrong, f"{len(rows) - len(wrong)}/{len(rows)} cases" + (f"; wrong: {', '.join(wrong)}" if wrong
                                                                              else ""))


def evaluate_targets(sections: dict[str, dict], contention_threads: int) -> list[dict]:
    """Every target of :data:`TARGETS` per thread count and heap mode (quiet runs), the contention targets
    per heap mode, and exactness over every row.

    Args:
        sections: the run's sections, rows tagged with ``threads``, ``heap`` and ``load``.
        contention_threads: the thread count of the busy runs (the quiet runs at it are their reference).

    Returns:
        ``{"target", "threads", "heap", "measured", "shown", "status"}`` entries, status ``PASS``, ``FAIL``
        or ``NOT RUN`` (``threads`` and ``heap`` ``None`` when the target covers the whole run or none ran).
    """
    entries = [entry for target in TARGETS for entry in _evaluate(target, sections)]
    entries += _contention(sections, contention_threads)
    entries += _cross_stream(sections)
    entries.append(_exactness([row for section in sections.values() for row in section["rows"]]))
    return entries
