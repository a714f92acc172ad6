"""``results.md``: metadata, targets and one table per workload."""

from __future__ import annotations

from collections.abc import Sequence

from .heap import HEAP_MODES
from .networks import stage_cell
from .settings import Config
from .streams import streams_table
from .workloads.w3 import SPARSE_MODES


def _ms(value: float, spread: Sequence[float] | None = None) -> str:
    text = f"{value:.2f}" if value < 100 else f"{value:.1f}"
    return text + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")


def _plain(value: object) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_plain(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def config_key(row: dict) -> tuple[int, bool, int]:
    """Heap modes in run order, quiet before busy, fewer threads first."""
    heap = HEAP_MODES.index(row["heap"]) if row["heap"] in HEAP_MODES else len(HEAP_MODES)
    return heap, row["load"] == "busy", row["threads"]


def _config(row: dict) -> Config:
    return Config(row["threads"], row["heap"], row["load"])


def ordered(rows: Sequence[dict]) -> list[dict]:
    """``rows`` grouped by case (in first-run order), each case's configurations in :func:`config_key` order."""
    first = {}
    for row in rows:
        first.setdefault(row["case"], len(first))
    return sorted(rows, key=lambda row: (first[row["case"]], config_key(row)))


def _config_cells(row: dict) -> tuple[object, ...]:
    return row["threads"], row["heap"], row["load"]


_CONFIG_HEADER = ("threads", "heap", "load")


def _pivot(rows: Sequence[dict]) -> list[str]:
    """Speed-up of every case (rows) in every configuration (columns)."""
    configs = sorted({_config(row) for row in rows}, key=lambda c: config_key(vars(c)))
    cells = {(row["case"], _config(row)): row["speedup"] for row in rows}
    cases = list(dict.fromkeys(row["case"] for row in rows))
    return _table(("speed-up", *(c.label() for c in configs)),
                  [(case, *(f"{cells[(case, c)]:.2f}x" if (case, c) in cells else "-" for c in configs))
                   for case in cases])


def _memory_cell(row: dict) -> str:
    if row.get("memory_ratio") is None:
        return "-"
    return f"{row['memory_ratio']:.2f}x ({row['zeroskip_peak_mb']:.0f}/{row['dense_peak_mb']:.0f} MB)"


def _speed_table(rows: Sequence[dict]) -> list[str]:
    header = ("case", *_CONFIG_HEADER, "input", "pixel density", "dense ms (IQR)", "zeroskip ms (IQR)", "speed-up",
              "active", "fill ms", "ideal", "efficiency", "ran", "peak mem zs/dense", "exact")
    return _table(header, [
        (r["case"], *_config_cells(r), "x".join(map(str, r["input_shape"])), f"{r['pixel_density']:.2%}",
         _ms(r["dense_ms"], r["dense_iqr"]), _ms(r["zeroskip_ms"], r["zeroskip_iqr"]), f"**{r['speedup']:.2f}x**",
         f"{r['active_fraction']:.1%}",
         _ms(r["fill_ms"]), f"{r['ideal_speedup']:.2f}x", f"{r['efficiency']:.2f}", r["ran"], _memory_cell(r),
         "yes" if r["exact"] else "**NO**")
        for r in ordered(rows)
    ])


def _sweep_table(rows: Sequence[dict]) -> list[str]:
    modes = ("dense",) + SPARSE_MODES
    header = ("pattern", *_CONFIG_HEADER, "pixel density", *(f"{m} ms" for m in modes), "fill ms", "best fixed",
              "auto ran", "auto speed-up", "auto/dense", "auto/best", "active (tiles / rows)", "ideal", "efficiency",
              "exact")
    return _table(header, [
        (r["case"], *_config_cells(r), f"{r['pixel_density']:.2%}", *(_ms(r["ms"][m]) for m in modes),
         _ms(r["ms"]["fill"]), r["best_fixed"], r["auto_ran"], f"**{r['speedup']:.2f}x**", f"{r['auto_vs_dense']:.3f}",
         f"{r['auto_vs_best']:.3f}", f"{r['active_fraction']['tiles']:.1%} / {r['active_fraction']['rows']:.1%}",
         f"{r['ideal_speedup']:.2f}x", f"{r['efficiency']:.2f}", "yes" if r["exact"] else "**NO**")
        for r in ordered(rows)
    ])


def _network_table(rows: Sequence[dict]) -> list[str]:
    header = ("case", *_CONFIG_HEADER, "input", "pixel density", "dense ms (IQR)", "zeroskip ms (IQR)", "speed-up",
              "work", "active per stage", "ran", "max error", "exact")
    return _table(header, [
        (r["case"], *_config_cells(r), "x".join(map(str, r["input_shape"])), f"{r['pixel_density']:.2%}",
         _ms(r["dense_ms"], r["dense_iqr"]), _ms(r["zeroskip_ms"], r["zeroskip_iqr"]), f"**{r['speedup']:.2f}x**",
         f"{r['active_fraction']:.1%}", stage_cell(r["stages"]), r["ran"], f"{r['max_error']:.1e}",
         "yes" if r["exact"] else "**NO**")
        for r in ordered(rows)
    ])


_SECTION_TABLES = {"speed": _speed_table, "sweep": _sweep_table, "network": _network_table, "streams": streams_table}


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _runs_table(runs: Sequence[dict]) -> list[str]:
    return _table(
        ("workload", *_CONFIG_HEADER, "run time s", "others before (cores)", "others during (cores)",
         "busy process (cores)", "load average at end"),
        [(r["workload"], *_config_cells(r), f"{r['elapsed_s']:.0f}", _cores(r["others_before"]), _cores(r["others"]),
          _cores(r["competitor_cpu"]), _plain(r["load_average_end"] or "-"))
         for r in runs],
    )


def render_markdown(results: dict) -> str:
    """``results.md``: metadata, targets, one summary and one table per workload, extras of the runs."""
    meta = results["metadata"]
    lines = ["# zeroskip benchmark results", ""]
    if meta.get("note"):
        lines += [f"> **{meta['note']}**", ""]
    lines += ["Produced by `zeroskip bench" + (" --quick" if meta["quick"] else "") + "`; method in"
              " `benchmarks/README.md`. Times are per input tensor (per frame at batch 1), medians of"
              f" {results['settings']['repeats']} alternating timed blocks, interquartile range in brackets."
              " Every workload ran at each thread count in each heap mode (*default*: glibc as users get it;"
              " *pinned*: kept warm, for noise control); *busy*: beside a process spinning on one core.", ""]
    lines += _table(("", ""), [(key, _plain(value)) for key, value in meta.items() if key != "note"])
    lines += ["", f"Run time: {results['elapsed_s']:.0f} s."]
    lines += [f"\n**Note:** {note}" for note in results.get("notes", [])]
    lines += ["", "## Targets", ""]
    lines += _table(("target", "threads", "heap", "measured", "status"),
                    [(t["target"], t["threads"] or "-", t["heap"] or "-", t["shown"], f"**{t['status']}**")
                     for t in results["targets"]])
    for name, section in results["sections"].items():
        lines += ["", f"## {section['title']}", ""]
        lines += _pivot(section["rows"]) + [""]
        lines += _SECTION_TABLES[section["kind"]](section["rows"])
        for note in section.get("notes", []):
            lines += ["", note]
        for run in (r for r in results["runs"] if r["workload"] == name):
            label = _config(run).label()
            if "breakdown" in run:
                lines += ["", f"### {name} breakdown ({label}): where a batch-1 zeroskip call spends its time", ""]
                lines += _breakdown_lines(run["breakdown"])
            if "peer" in run:
                lines += ["", f"### Peer: spconv (CPU; {label})", ""]
                lines += _peer_lines(run["peer"])
    lines += ["", "## Runs: time and load of every workload in every configuration", ""]
    lines += ["*others*: cores' worth of CPU that other processes used (`/proc/stat` less this process), over"
              " 0.2 s just before the run and during it (the busy process included); *busy process*: the CPU the"
              " competitor got, in cores.", ""]
    lines += _runs_table(results["runs"])
    return "\n".join(lines) + "\n"


def _breakdown_lines(result: dict) -> list[str]:
    if "error" in result:
        return [f"Not available: {result['error']}"]
    lines = [f"Profiled with torch.profiler over {result['inputs']} frames, by the engine's `zeroskip::<stage>`"
             f" labels (a stage's own time, without the labels nested in it); shares scaled to the measured"
             f" {result['measured_ms']:.2f} ms per frame."]
    if not result["labelled"]:
        lines += ["", "The engine labelled no stage in this call: all its time is outside stages."]
    lines += [""] + _table(("stage", "ms per frame", "share"),
                           [(s["stage"], f"{s['ms']:.3f}", f"{s['share']:.1%}") for s in result["stages"]])
    lines += ["", "Top operators:", ""]
    lines += _table(("operator", "stage", "ms", "share"),
                    [(f"`{o['operator']}`", o["stage"], f"{o['ms']:.3f}", f"{o['share']:.1%}")
                     for o in result["operators"]])
    return lines


def _peer_lines(peer: dict) -> list[str]:
    lines = [f"spconv {peer['status']}: `{peer['error']}`", ""] if "error" in peer else []
    if peer.get("rows"):
        lines += [f"spconv {peer['version']}, `SparseConv2d` with W1's weights, output checked equal to dense"
                  " before timing. Times per frame (batch 1) or per batch, all four in one alternating loop.", ""]
        lines += _table(
            ("batch", "threads", "dense ms", "zeroskip ms", "spconv conv only ms", "spconv dense-to-dense ms",
             "speed-up zeroskip", "speed-up spconv (conv only)", "speed-up spconv (dense to dense)"),
            [(r["batch"], r["threads"], _ms(r["dense ms"]), _ms(r["zeroskip ms"]), _ms(r["spconv conv only ms"]),
              _ms(r["spconv dense to dense ms"]), f"{r['speedup zeroskip']:.2f}x",
              f"{r['speedup spconv conv only']:.2f}x", f"{r['speedup spconv dense to dense']:.2f}x")
             for r in peer["rows"]],
        )
    for note in peer.get("notes", []):
        lines += ["", f"Note: {note}"]
    return lines


