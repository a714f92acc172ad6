"""``results.png``: the figures of a run."""

from __future__ import annotations

import io
from collections.abc import Sequence

from .targets import TARGET_NETWORK_DENSE_INPUT
from .workloads.w3 import SPARSE_MODES


def render_plot(results: dict) -> bytes | None:
    """``results.png``: W3 time against density per mode, and the speed-ups of W1, W2 and W4 with
    their ideal; with W5, a second row: its speed-ups, and the active fraction per stage. ``None``
    without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    sections = results["sections"]
    networks = sections.get("W5", {}).get("rows", [])
    figure = Figure(figsize=(13, 10 if networks else 5), layout="constrained")
    axes = figure.subplots(2 if networks else 1, 2, squeeze=False)
    sweep_axes, bar_axes = axes[0]
    sweep = [r for r in sections.get("W3", {}).get("rows", []) if r["pattern"] == "blobs"]
    if sweep:
        positions = range(len(sweep))
        for mode in ("dense",) + SPARSE_MODES:
            sweep_axes.plot(positions, [r["ms"][mode] for r in sweep], marker="o", label=mode,
                            linewidth=2.5 if mode == "auto" else 1.2)
        sweep_axes.set_xticks(list(positions), [f"{r['density']:.1%}" for r in sweep])
        sweep_axes.set_yscale("log")
        sweep_axes.set_xlabel("pixel density (random blobs)")
        sweep_axes.set_ylabel("ms per frame")
        sweep_axes.set_title("W3: time per mode against density")
        sweep_axes.legend()
    bars = [r for name in ("W1", "W2", "W4") for r in sections.get(name, {}).get("rows", [])]
    if bars:
        positions = range(len(bars))
        bar_axes.bar(positions, [r["speedup"] for r in bars], color="tab:blue", label="measured")
        bar_axes.scatter(positions, [r["ideal_speedup"] for r in bars], color="black", marker="_", s=300,
                         label="ideal", zorder=3)
        bar_axes.axhline(1.0, color="grey", linewidth=0.8)
        bar_axes.set_xticks(list(positions), [r["case"] for r in bars], rotation=35, ha="right", fontsize=8)
        bar_axes.set_yscale("log")
        bar_axes.set_ylabel("speed-up over dense")
        bar_axes.set_title("zeroskip speed-up (auto)")
        bar_axes.legend(loc="best", framealpha=0.6)
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
    positions = range(len(rows))
    bars = speed_axes.bar(positions, [r["speedup"] for r in rows], color="tab:green", edgecolor="black", linewidth=0.5)
    for bar, row in zip(bars, rows):
        bar.set_hatch("//" if row["input"] == "unmasked" else "")
    speed_axes.axhline(1.0, color="grey", linewidth=0.8)
    speed_axes.axhline(TARGET_NETWORK_DENSE_INPUT, color="grey", linewidth=0.8, linestyle=":")
    speed_axes.set_xticks(list(positions), [r["case"].removeprefix("W5 ") for r in rows], rotation=35, ha="right",
                          fontsize=8)
    speed_axes.set_ylabel("speed-up over the dense model")
    speed_axes.set_title("W5: whole networks, batch 1 (hatched: unmasked frames)")
    longest = 1
    for row in (r for r in rows if r["input"] == "masked"):
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


