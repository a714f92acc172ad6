"""``results.png``: the figures of a run."""

from __future__ import annotations

import io
from collections.abc import Sequence

from .report import config_key
from .settings import Config
from .targets import TARGET_DENSE_INPUT
from .workloads.w3 import SPARSE_MODES


def _reference(rows: Sequence[dict]) -> list[dict]:
    """The rows of one configuration, for the panels that show one: quiet, the last heap mode (pinned when
    it ran), the fewest threads."""
    if not rows:
        return []
    best = min(rows, key=lambda r: (r["load"] == "busy", -config_key(r)[0], r["threads"]))
    return [r for r in rows if (r["threads"], r["heap"], r["load"]) == (best["threads"], best["heap"], best["load"])]


def _label(row: dict) -> str:
    return Config(row["threads"], row["heap"], row["load"]).label()


def _grouped_bars(axes, rows: Sequence[dict], ideal: bool) -> list:
    """Speed-up bars, one group per case, one bar per configuration (legend); ``ideal`` marks each bar's
    ideal speed-up. Returns the bars, in ``rows`` order grouped by configuration."""
    configs = sorted({_label(r): config_key(r) for r in rows}.items(), key=lambda item: item[1])
    cases = list(dict.fromkeys(r["case"] for r in rows))
    width = 0.8 / len(configs)
    drawn = []
    for j, (label, _) in enumerate(configs):
        chosen = [r for r in rows if _label(r) == label]
        xs = [cases.index(r["case"]) - 0.4 + width * (j + 0.5) for r in chosen]
        drawn += list(axes.bar(xs, [r["speedup"] for r in chosen], width, label=label, edgecolor="black",
                               linewidth=0.4))
        if ideal:
            axes.scatter(xs, [r["ideal_speedup"] for r in chosen], color="black", marker="_", s=60, zorder=3,
                         label="ideal" if j == 0 else None)
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_xticks(range(len(cases)), cases, rotation=35, ha="right", fontsize=8)
    axes.legend(loc="best", fontsize=7, framealpha=0.6)
    return drawn


def render_plot(results: dict) -> bytes | None:
    """``results.png``: W3 time against density per mode (one configuration), and the speed-ups of W1, W2
    and W4 with their ideal in every configuration; with W5, a second row: its speed-ups in every
    configuration, and the active fraction per stage. ``None`` without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    sections = results["sections"]
    networks = sections.get("W5", {}).get("rows", [])
    figure = Figure(figsize=(13, 10 if networks else 5), layout="constrained")
    axes = figure.subplots(2 if networks else 1, 2, squeeze=False)
    sweep_axes, bar_axes = axes[0]
    sweep = _reference([r for r in sections.get("W3", {}).get("rows", []) if r["pattern"] == "blobs"])
    if sweep:
        positions = range(len(sweep))
        for mode in ("dense",) + SPARSE_MODES:
            sweep_axes.plot(positions, [r["ms"][mode] for r in sweep], marker="o", label=mode,
                            linewidth=2.5 if mode == "auto" else 1.2)
        sweep_axes.set_xticks(list(positions), [f"{r['density']:.1%}" for r in sweep])
        sweep_axes.set_yscale("log")
        sweep_axes.set_xlabel("pixel density (random blobs)")
        sweep_axes.set_ylabel("ms per frame")
        sweep_axes.set_title(f"W3: time per mode against density ({_label(sweep[0])})")
        sweep_axes.legend()
    bars = [r for name in ("W1", "W2", "W4") for r in sections.get(name, {}).get("rows", [])]
    if bars:
        _grouped_bars(bar_axes, bars, ideal=True)
        bar_axes.set_yscale("log")
        bar_axes.set_ylabel("speed-up over dense")
        bar_axes.set_title("zeroskip speed-up (auto), ideal marked")
    for panel, empty, what in ((sweep_axes, not sweep, "W3"), (bar_axes, not bars, "W1, W2 and W4")):
        if empty:
            panel.text(0.5, 0.5, f"{what} not run", ha="center", va="center")
            panel.set_axis_off()
    if networks:
        _plot_networks(axes[1][0], axes[1][1], networks)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _plot_networks(speed_axes, stage_axes, rows: Sequence[dict]) -> None:
    """W5: speed-up per case (unmasked frames hatched), and the active fraction of each stage."""
    configs = sorted({_label(r): config_key(r) for r in rows}.items(), key=lambda item: item[1])
    in_bar_order = [r for label, _ in configs for r in rows if _label(r) == label]
    for bar, row in zip(_grouped_bars(speed_axes, rows, ideal=False), in_bar_order):
        bar.set_hatch("//" if row["input"] == "unmasked" else "")
    speed_axes.axhline(TARGET_DENSE_INPUT, color="grey", linewidth=0.8, linestyle=":")
    speed_axes.set_ylabel("speed-up over the dense model")
    speed_axes.set_title("W5: whole networks, batch 1 (hatched: unmasked frames)")
    longest = 1
    for row in (r for r in _reference(rows) if r["input"] == "masked"):
        fractions = list(row["stages"].values())
        longest = max(longest, len(fractions))
        stage_axes.plot(range(len(fractions)), fractions, marker="o",
                        label=f"{row['case'].removeprefix('W5 ')}: {row['speedup']:.2f}x")
    stage_axes.set_xticks(range(0, longest, max(1, longest // 10)))
    stage_axes.set_ylim(0, 1.05)
    stage_axes.set_xlabel("stage, input to output\n(ResNet: conv1, layer1-4; FCN: the same, then its head;"
                          " MobileNetV2: features.0-18)", fontsize=9)
    stage_axes.set_ylabel("mean active fraction of its convolutions")
    stage_axes.set_title("W5: the active region grows with depth (masked frames)")
    stage_axes.legend(loc="best", fontsize=8, framealpha=0.6)


