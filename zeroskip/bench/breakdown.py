"""Where a zeroskip call's time goes, profiled with ``torch.profiler``."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn

from .rows import conv_args, each

# A Python frame in a zeroskip engine module (not this one), as torch.profiler names it:
# ".../zeroskip/_tiles.py(120)".
_PACKAGE_FILE = re.compile(r"zeroskip[/\\](?!bench\.py)\w+\.py\(\d+\)$")
BREAKDOWN_STEPS = ("activity check", "planning", "gather", "convolution", "scatter", "fill", "allocation", "python")
# The step of every operator called from these zeroskip functions (the innermost one listed wins).
_FUNCTION_STEPS = {
    "sampled_density": "activity check",
    "sample_activity": "activity check",
    "scan_activity": "activity check",
    "row_activity": "activity check",
    "cell_activity": "activity check",
    "_reduce_blocks": "activity check",
    "_band_buffer": "gather",
    "_pad_band": "gather",
    "_new_output": "fill",
    "empty_strided": "allocation",
}


def _operator_step(name: str, functions: Sequence[str]) -> str:
    """The breakdown step of one top-level operator, from its name and the zeroskip functions on its
    Python stack (innermost first)."""
    name = name.lower()
    if "conv" in name:
        return "convolution"
    if "empty" in name or "frombuffer" in name:
        return "allocation"
    listed = next((f for f in functions if f in _FUNCTION_STEPS), None)
    if listed:
        return _FUNCTION_STEPS[listed]
    if name in ("aten::zero_", "aten::fill_"):
        return "fill"
    if "index_put" in name or "scatter" in name or name == "aten::copy_":
        return "scatter"
    if name in ("aten::index", "aten::constant_pad_nd", "aten::pad") or "gather" in name:
        return "gather"
    return "planning"


def _is_python(event) -> bool:
    flag = getattr(event, "is_python_function", None)
    return flag if isinstance(flag, bool) else ".py(" in event.name or event.name.startswith("<")


def _zeroskip_functions(event) -> list[str]:
    """Names of the zeroskip functions on ``event``'s Python stack, innermost first."""
    names = []
    parent = event.cpu_parent
    while parent is not None:
        path, _, function = parent.name.rpartition(": ")
        if _PACKAGE_FILE.search(path):
            names.append(function)
        parent = parent.cpu_parent
    return names


def _top_operators(events) -> list:
    """Operators not called by another operator (their children's time is inside theirs)."""
    tops = []
    for event in events:
        if _is_python(event):
            continue
        parent = event.cpu_parent
        while parent is not None and _is_python(parent):
            parent = parent.cpu_parent
        if parent is None:
            tops.append(event)
    return tops


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
    """Where a zeroskip call's time goes, by step (activity check, planning, gather, convolution, scatter,
    fill, allocation, Python), profiled from the outside on the real call.

    The call runs twice under ``torch.profiler``: once with Python stacks, to learn which zeroskip
    function called each top-level operator (that and the operator's name give its step, see
    :func:`_operator_step`), and once without, for operator times undistorted by stack tracing.
    The time outside operators is the Python step (plan logic, dispatch). Shares are scaled to the
    call's median time measured without the profiler.

    Returns:
        ``{"steps": [{"step", "ms", "share"}], "functions": [...], "operators": [...]}``, or
        ``{"error": ...}`` when the profiler cannot attribute the call.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from ..conv import conv2d

    args = conv_args(conv)
    run = each(lambda x: conv2d(x, **args), inputs)
    run()
    try:
        with _quiet_stderr(), torch_profile(activities=[ProfilerActivity.CPU], with_stack=True) as traced:
            run()
        with _quiet_stderr(), torch_profile(activities=[ProfilerActivity.CPU]) as timed:
            start = time.perf_counter()
            run()
            wall_us = (time.perf_counter() - start) * 1e6
    except RuntimeError as error:
        return {"error": f"torch.profiler failed: {error}"}
    traced_ops = _top_operators(traced.events())
    timed_ops = _top_operators(timed.events())
    same = [a.name for a in traced_ops] == [b.name for b in timed_ops]
    times = [b.cpu_time_total for b in timed_ops] if same else [a.cpu_time_total for a in traced_ops]
    if not same:
        wall_us = sum(times)
    steps: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    operators: Counter[str] = Counter()
    for op, us in zip(traced_ops, times):
        stack = _zeroskip_functions(op)
        steps[_operator_step(op.name, stack)] += us
        functions[stack[0] if stack else "(outside zeroskip)"] += us
        operators[op.name] += us
    steps["python"] += max(0.0, wall_us - sum(times))
    total = sum(steps.values()) or 1.0

    def listed(counter: Counter[str], key: str, limit: int | None = None) -> list[dict]:
        return [
            {key: name, "ms": measured_ms * us / total, "share": us / total}
            for name, us in counter.most_common(limit)
        ]

    return {
        "inputs": len(inputs),
        "measured_ms": measured_ms,
        "attribution": "timed run" if same else "stack-traced run (operator sequences differed)",
        "steps": [s for s in listed(steps, "step") if s["share"] > 0],
        "order": list(BREAKDOWN_STEPS),
        "functions": listed(functions, "function", 10),
        "operators": listed(operators, "operator", 10),
    }


