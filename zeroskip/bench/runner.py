"""Running the suite: workloads in turn, peak memory, targets, and the three result files."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .heap import peak_memory, pin_malloc, pin_timing_heap
from .metadata import busy_note, metadata
from .output import write_atomic
from .plot import render_plot
from .report import render_markdown
from .settings import Context, Settings
from .targets import evaluate_targets
from .timing import threads
from .workloads import WORKLOADS


def _measure_memory(ctx: Context) -> str:
    """Fill ``dense_peak_mb``, ``zeroskip_peak_mb`` and ``memory_ratio`` of every queued row."""
    reason = pin_malloc()
    if reason:
        return f"peak memory not measured: {reason}"
    for row, dense, sparse in ctx.memory_cases:
        dense()
        sparse()
        dense_peak, sparse_peak = peak_memory(dense), peak_memory(sparse)
        row["dense_peak_mb"], row["zeroskip_peak_mb"] = dense_peak / 2**20, sparse_peak / 2**20
        row["memory_ratio"] = sparse_peak / dense_peak if dense_peak else None
        ctx.log(f"  {row['case']:<28} dense {row['dense_peak_mb']:8.1f} MB  zeroskip {row['zeroskip_peak_mb']:8.1f} MB")
    ctx.memory_cases.clear()
    return ""




def run(settings: Settings) -> dict:
    """Run the selected workloads, check the targets and write the three result files.

    Fixes glibc's malloc thresholds for the rest of the process: pinned high for timing first (see
    :func:`pin_timing_heap`), then low for measuring peak memory (see :func:`pin_malloc`), after all
    timing.

    Returns:
        The results, as written to ``results.json``.
    """
    started = time.perf_counter()
    allocator = pin_timing_heap()
    with threads(settings.threads):
        ctx = Context(settings)
        meta = {**metadata(settings), "allocator": allocator}
        ctx.log(f"allocator: {allocator}")
        sections: dict[str, dict] = {}
        with torch.no_grad():
            for name in settings.workloads:
                ctx.log(f"{name}: {WORKLOADS[name].title}")
                sections[name] = WORKLOADS[name].run(ctx)
            notes = []
            if settings.memory:
                ctx.log("peak memory")
                reason = _measure_memory(ctx)
                if reason:
                    notes.append(reason)
        meta["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        busy = busy_note(meta)
        if busy:
            notes.append(busy)
            ctx.log(f"warning: {busy}")
        results = {
            "metadata": meta,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
            "targets": evaluate_targets(sections),
            "sections": sections,
            "notes": notes,
            "elapsed_s": time.perf_counter() - started,
        }
    settings.out.mkdir(parents=True, exist_ok=True)
    plot = render_plot(results)
    if plot is None:
        results["notes"].append("results.png not written: matplotlib is not installed (pip install 'zeroskip[plot]').")
    write_atomic(settings.out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    write_atomic(settings.out / "results.md", render_markdown(results).encode())
    if plot is not None:
        write_atomic(settings.out / "results.png", plot)
    return results


