"""Running the suite: every workload in every configuration (heap mode, thread count, quiet or beside a
busy process), then peak memory, targets, and the three result files."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .contention import RunLoad, busy_note, load_average, observe
from .heap import peak_memory, pin_malloc, use_heap
from .metadata import metadata
from .output import write_atomic
from .plot import render_plot
from .report import render_markdown
from .settings import Config, Context, Settings
from .targets import evaluate_targets
from .timing import threads
from .workloads import WORKLOADS, Workload

# Keys of a workload's section that hold its rows and description; any other key is an extra of one
# run (the W1 breakdown, the spconv peer), kept in that run's record.
_SECTION_KEYS = ("title", "kind", "rows", "notes")


def _measure_memory(ctx: Context) -> str:
    """Fill ``dense_peak_mb``, ``zeroskip_peak_mb`` and ``memory_ratio`` of every queued row."""
    reason = pin_malloc()
    if reason:
        return f"peak memory not measured: {reason}"
    for row, dense, sparse in ctx.memory_cases:
        with threads(row["threads"]):
            dense()
            sparse()
            dense_peak, sparse_peak = peak_memory(dense), peak_memory(sparse)
        row["dense_peak_mb"], row["zeroskip_peak_mb"] = dense_peak / 2**20, sparse_peak / 2**20
        row["memory_ratio"] = sparse_peak / dense_peak if dense_peak else None
        ctx.log(f"  {row['case']:<28} {row['threads']} thread(s)  dense {row['dense_peak_mb']:8.1f} MB"
                f"  zeroskip {row['zeroskip_peak_mb']:8.1f} MB")
    ctx.memory_cases.clear()
    return ""


def configs(settings: Settings, heap: str, workload: Workload, contention_threads: int) -> list[Config]:
    """The configurations ``workload`` runs in within ``heap``: every thread count on a quiet machine, then
    (if it has a contention case) beside a busy process at ``contention_threads``."""
    quiet_runs = [Config(count, heap) for count in settings.threads]
    busy = [Config(contention_threads, heap, "busy")] if settings.contention and workload.contention else []
    return quiet_runs + busy


def _record(name: str, config: Config, section: dict, sections: dict[str, dict], load: RunLoad,
            seconds: float) -> dict:
    """Tag ``section``'s rows with ``config``, add them to ``sections[name]``; the record of this run."""
    tag = {"threads": config.threads, "heap": config.heap, "load": config.load}
    for row in section["rows"]:
        row.update(tag)
    merged = sections.setdefault(name, {**{k: section[k] for k in _SECTION_KEYS if k in section}, "rows": []})
    merged["rows"] += section["rows"]
    extras = {key: value for key, value in section.items() if key not in _SECTION_KEYS}
    return {"workload": name, **tag, "elapsed_s": seconds, "others_before": load.others_before,
            "others": load.others, "competitor_cpu": load.competitor_cpu, "load_average_end": load.load_average_end,
            **extras}


def run(settings: Settings) -> dict:
    """Run the selected workloads in every configuration, check the targets and write the result files.

    The heap modes run in :data:`~zeroskip.bench.heap.HEAP_MODES` order (glibc's dynamic threshold
    cannot come back once set); within each, every workload runs at each thread count and then, if it
    has a contention case, beside a busy process. Peak memory is measured last, with glibc's
    thresholds set low (see :func:`~zeroskip.bench.heap.pin_malloc`) for the rest of the process.

    Returns:
        The results, as written to ``results.json``.
    """
    started = time.perf_counter()
    default_threads = torch.get_num_threads()
    contention_threads = settings.contention_threads or default_threads
    ctx = Context(settings)
    meta = metadata(settings, default_threads)
    allocators: dict[str, str] = {}
    sections: dict[str, dict] = {}
    runs: list[dict] = []
    notes: list[str] = []
    with torch.no_grad():
        for heap in settings.heaps:
            usable, allocators[heap] = use_heap(heap)
            ctx.log(f"{heap} heap: {allocators[heap]}")
            if not usable:
                notes.append(f"the {heap} heap was not run: {allocators[heap]}")
                continue
            for name in settings.workloads:
                workload = WORKLOADS[name]
                for config in configs(settings, heap, workload, contention_threads):
                    ctx.config = config
                    ctx.log(f"{name}: {workload.title} ({config.label()})")
                    begun = time.perf_counter()
                    competitor = settings.contention_limit_s if config.load == "busy" else None
                    with threads(config.threads), observe(competitor) as load:
                        section = workload.run(ctx)
                    runs.append(_record(name, config, section, sections, load, time.perf_counter() - begun))
        if settings.memory:
            ctx.log("peak memory")
            reason = _measure_memory(ctx)
            if reason:
                notes.append(reason)
    meta["allocator"] = allocators
    meta["load_average_end"] = load_average()
    busy = busy_note(meta, runs)
    if busy:
        notes.append(busy)
        ctx.log(f"warning: {busy}")
    results = {
        "metadata": meta,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "targets": evaluate_targets(sections, contention_threads),
        "sections": sections,
        "runs": runs,
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
