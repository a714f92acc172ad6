"""``results.md``: metadata, targets and one table per workload."""

from __future__ import annotations

from collections.abc import Sequence

from .networks import stage_cell
from .workloads.w3 import SPARSE_MODES


def _ms(value: float, spread: Sequence[float] | None = None) -> str:
    text = f"{value:.2f}" if value < 100 else f"{value:.1f}"
    return text + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")


def _plain(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _memory_cell(row: dict) -> str:
    if row.get("memory_ratio") is None:
        return "-"
    return f"{row['memory_ratio']:.2f}x ({row['zeroskip_peak_mb']:.0f}/{row['dense_peak_mb']:.0f} MB)"


def _speed_table(rows: Sequence[dict]) -> list[str]:
    header = ("case", "input", "pixel density", "dense ms (IQR)", "zeroskip ms (IQR)", "speed-up", "active",
              "fill ms", "ideal", "efficiency", "ran", "peak mem zs/dense", "exact")
    return _table(header, [
        (r["case"], "x".join(map(str, r["input_shape"])), f"{r['pixel_density']:.2%}",
         _ms(r["dense_ms"], r["dense_iqr"]), _ms(r["zeroskip_ms"], r["zeroskip_iqr"]), f"**{r['speedup']:.2f}x**",
         f"{r['active_fraction']:.1%}",
         _ms(r["fill_ms"]), f"{r['ideal_speedup']:.2f}x", f"{r['efficiency']:.2f}", r["ran"], _memory_cell(r),
         "yes" if r["exact"] else "**NO**")
        for r in rows
    ])


def _sweep_table(rows: Sequence[dict]) -> list[str]:
    modes = ("dense",) + SPARSE_MODES
    header = ("pattern", "pixel density", *(f"{m} ms" for m in modes), "fill ms", "best fixed", "auto ran",
              "auto speed-up", "auto/dense", "auto/best", "active (tiles / rows)", "ideal", "efficiency", "exact")
    return _table(header, [
        (r["case"], f"{r['pixel_density']:.2%}", *(_ms(r["ms"][m]) for m in modes), _ms(r["ms"]["fill"]),
         r["best_fixed"], r["auto_ran"], f"**{r['speedup']:.2f}x**", f"{r['auto_vs_dense']:.3f}",
         f"{r['auto_vs_best']:.3f}", f"{r['active_fraction']['tiles']:.1%} / {r['active_fraction']['rows']:.1%}",
         f"{r['ideal_speedup']:.2f}x", f"{r['efficiency']:.2f}", "yes" if r["exact"] else "**NO**")
        for r in rows
    ])


def _network_table(rows: Sequence[dict]) -> list[str]:
    header = ("case", "input", "pixel density", "dense ms (IQR)", "zeroskip ms (IQR)", "speed-up", "work",
              "active per stage", "ran", "max error", "exact")
    return _table(header, [
        (r["case"], "x".join(map(str, r["input_shape"])), f"{r['pixel_density']:.2%}",
         _ms(r["dense_ms"], r["dense_iqr"]), _ms(r["zeroskip_ms"], r["zeroskip_iqr"]), f"**{r['speedup']:.2f}x**",
         f"{r['active_fraction']:.1%}", stage_cell(r["stages"]), r["ran"], f"{r['max_error']:.1e}",
         "yes" if r["exact"] else "**NO**")
        for r in rows
    ])


_SECTION_TABLES = {"speed": _speed_table, "sweep": _sweep_table, "network": _network_table}


def render_markdown(results: dict) -> str:
    """``results.md``: metadata, targets, and one table per workload."""
    meta = results["metadata"]
    lines = ["# zeroskip benchmark results", ""]
    if meta.get("note"):
        lines += [f"> **{meta['note']}**", ""]
    lines += ["Produced by `zeroskip bench" + (" --quick" if meta["quick"] else "") + "`; method in"
              " `benchmarks/README.md`. Times are per input tensor (per frame at batch 1), medians of"
              f" {results['settings']['repeats']} alternating timed blocks, interquartile range in brackets.", ""]
    lines += _table(("", ""), [(key, _plain(value)) for key, value in meta.items() if key != "note"])
    lines += ["", f"Run time: {results['elapsed_s']:.0f} s."]
    lines += [f"\n**Note:** {note}" for note in results.get("notes", [])]
    lines += ["", "## Targets", ""]
    lines += _table(("target", "measured", "status"),
                    [(t["target"], t["shown"], f"**{t['status']}**") for t in results["targets"]])
    for name, section in results["sections"].items():
        lines += ["", f"## {section['title']}", ""]
        lines += _SECTION_TABLES[section["kind"]](section["rows"])
        for note in section.get("notes", []):
            lines += ["", note]
        if "breakdown" in section:
            lines += ["", f"### {name} breakdown: where a batch-1 zeroskip call spends its time", ""]
            lines += _breakdown_lines(section["breakdown"])
        if "peer" in section:
            lines += ["", "### Peer: spconv (CPU)", ""]
            lines += _peer_lines(section["peer"])
    return "\n".join(lines) + "\n"


def _breakdown_lines(result: dict) -> list[str]:
    if "error" in result:
        return [f"Not available: {result['error']}"]
    lines = [f"Profiled with torch.profiler over {result['inputs']} frames; shares scaled to the measured"
             f" {result['measured_ms']:.2f} ms per frame ({result['attribution']}).", ""]
    order = {step: i for i, step in enumerate(result["order"])}
    steps = sorted(result["steps"], key=lambda s: order.get(s["step"], len(order)))
    lines += _table(("step", "ms per frame", "share"),
                    [(s["step"], f"{s['ms']:.3f}", f"{s['share']:.1%}") for s in steps])
    lines += ["", "By zeroskip function:", ""]
    lines += _table(("function", "ms", "share"),
                    [(f"`{f['function']}`", f"{f['ms']:.3f}", f"{f['share']:.1%}") for f in result["functions"]])
    lines += ["", "Top operators:", ""]
    lines += _table(("operator", "ms", "share"),
                    [(f"`{o['operator']}`", f"{o['ms']:.3f}", f"{o['share']:.1%}") for o in result["operators"]])
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


