"""Where a zeroskip call's time goes, by engine stage, from the engine's own ``torch.profiler`` labels.

The engine wraps each stage of a call in ``torch.profiler.record_function("zeroskip::<stage>")``
(``check``, ``plan``, ``output``, ``execute``, and finer ones nested inside them, e.g. ``scan`` or
``fill``). The breakdown reads those labels, not the engine's private function names, so that it
survives a refactored engine: any label starting with ``zeroskip::`` is a stage, named by the rest.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn

from .rows import conv_args, each

LABEL_PREFIX = "zeroskip::"
# The engine's stages in call order; finer or unknown labels follow, by time.
STAGE_ORDER = ("check", "plan", "output", "execute")
# Time of the call under no label: the front end (argument checks, dispatch) and whatever is unlabelled.
OUTSIDE = "outside stages"


def _stage(event) -> str | None:
    return event.name[len(LABEL_PREFIX):] if event.name.startswith(LABEL_PREFIX) else None


def _nested_label_us(event) -> float:
    """Time of the nearest ``zeroskip::`` labels below ``event`` (their own nested labels are inside theirs)."""
    total = 0.0
    for child in event.cpu_children:
        total += child.cpu_time_total if _stage(child) is not None else _nested_label_us(child)
    return total


def _enclosing_stage(event) -> str:
    parent = event.cpu_parent
    while parent is not None:
        stage = _stage(parent)
        if stage is not None:
            return stage
        parent = parent.cpu_parent
    return OUTSIDE


def attribute(events) -> tuple[Counter[str], Counter[tuple[str, str]], float]:
    """Exclusive time of every stage label, and the time of the top operators with their stage.

    A stage's time is its label's total minus that of the labels nested in it (a finer stage keeps its
    own time, the enclosing one the rest). Operators are counted at the outermost operator (its
    children's time is inside its own), under the innermost label enclosing it.

    Args:
        events: ``torch.profiler.profile(...).events()``.

    Returns:
        ``(stage -> µs, (operator, stage) -> µs, µs under top-level labels)``.
    """
    stages: Counter[str] = Counter()
    operators: Counter[tuple[str, str]] = Counter()
    labelled = 0.0
    for event in events:
        stage = _stage(event)
        if stage is not None:
            stages[stage] += event.cpu_time_total - _nested_label_us(event)
            if _enclosing_stage(event) == OUTSIDE:
                labelled += event.cpu_time_total
            continue
        parent = event.cpu_parent
        while parent is not None and _stage(parent) is not None:
            parent = parent.cpu_parent
        if parent is None:  # not inside another operator
            operators[(event.name, _enclosing_stage(event))] += event.cpu_time_total
    return stages, operators, labelled


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's native log lines (Kineto writes them straight to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def breakdown(inputs: Sequence[torch.Tensor], conv: nn.Conv2d, measured_ms: float) -> dict:
    """Where a zeroskip call's time goes, by engine stage (its ``zeroskip::<stage>`` labels).

    The call (``zeroskip.conv2d`` on every input in turn) runs once under ``torch.profiler`` (CPU
    activity, no stacks). Each stage gets its label's exclusive time; the wall time outside every
    label is :data:`OUTSIDE`. Shares are scaled to the call's median time measured without the
    profiler (``measured_ms``, per input).

    Returns:
        ``{"inputs", "measured_ms", "labelled", "stages": [{"stage", "ms", "share"}], "operators":
        [{"operator", "stage", "ms", "share"}]}`` (ten slowest operators), or ``{"error": ...}`` when the
        profiler fails.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from ..conv import conv2d

    args = conv_args(conv)
    run = each(lambda x: conv2d(x, **args), inputs)
    run()
    try:
        with _quiet_stderr(), torch_profile(activities=[ProfilerActivity.CPU]) as profiled:
            start = time.perf_counter()
            run()
            wall_us = (time.perf_counter() - start) * 1e6
    except RuntimeError as error:
        return {"error": f"torch.profiler failed: {error}"}
    stages, operators, labelled = attribute(profiled.events())
    stages[OUTSIDE] += max(0.0, wall_us - labelled)
    total = sum(stages.values()) or 1.0
    order = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    ranked = sorted((s for s in stages if s != OUTSIDE), key=lambda s: (order.get(s, len(order)), -stages[s]))
    scale = measured_ms / total
    return {
        "inputs": len(inputs),
        "measured_ms": measured_ms,
        "labelled": bool(labelled),
        "stages": [{"stage": s, "ms": stages[s] * scale, "share": stages[s] / total} for s in [*ranked, OUTSIDE]
                   if stages[s] > 0],
        "operators": [{"operator": name, "stage": stage, "ms": us * scale, "share": us / total}
                      for (name, stage), us in operators.most_common(10)],
    }
