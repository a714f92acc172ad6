"""The speed targets of the project, evaluated on one run's results."""

from __future__ import annotations

# The speed targets (issue 3; W5: issue 5).
TARGET_SPEEDUP = {("W1", 1): 5.0, ("W1", 16): 4.0, ("W2", 1): 5.0, ("W2", 16): 5.0}
# (model, input size (H, W)) -> speed-up on the masked frames, batch 1.
TARGET_NETWORK_SPEEDUP = {("resnet18", (576, 768)): 1.5, ("resnet18", (1080, 1920)): 2.0}
# Every model on the unmasked frames: zeroskip at most 3 % slower than dense.
TARGET_NETWORK_DENSE_INPUT = 0.97
TARGET_EFFICIENCY = 0.5
TARGET_AUTO_VS_DENSE = 1.03
TARGET_AUTO_VS_BEST = 1.10
TARGET_SWEEP_DENSITY, TARGET_SWEEP_SPEEDUP = 0.05, 2.0
TARGET_MEMORY_RATIO = 1.25



def _speed_rows(sections: dict[str, dict], name: str) -> list[dict]:
    return sections.get(name, {}).get("rows", [])


def evaluate_targets(sections: dict[str, dict]) -> list[dict]:
    """Each target of the issue with the measured figure and PASS, FAIL or NOT RUN."""
    targets = []

    def add(target: str, measured: float | None, passed: bool, shown: str | None = None) -> None:
        status = "NOT RUN" if measured is None else ("PASS" if passed else "FAIL")
        targets.append({"target": target, "measured": measured, "shown": shown or "-", "status": status})

    for (workload, batch), goal in TARGET_SPEEDUP.items():
        row = next((r for r in _speed_rows(sections, workload) if r["batch"] == batch), None)
        speedup = row["speedup"] if row else None
        add(f"{workload} batch {batch} speed-up >= {goal:g}x", speedup, bool(row) and speedup >= goal,
            row and f"{speedup:.2f}x")
    for (workload, batch) in TARGET_SPEEDUP:
        row = next((r for r in _speed_rows(sections, workload) if r["batch"] == batch), None)
        efficiency = row["efficiency"] if row else None
        add(f"{workload} batch {batch} efficiency >= {TARGET_EFFICIENCY:g}", efficiency,
            bool(row) and efficiency >= TARGET_EFFICIENCY, row and f"{efficiency:.2f}")
    sweep = _speed_rows(sections, "W3")
    if sweep:
        worst = max(sweep, key=lambda r: r["auto_vs_dense"])
        add(f"W3 auto at most {TARGET_AUTO_VS_DENSE - 1:.0%} slower than dense at every density",
            worst["auto_vs_dense"], worst["auto_vs_dense"] <= TARGET_AUTO_VS_DENSE,
            f"worst {worst['auto_vs_dense']:.3f}x dense ({worst['case']})")
        worst = max(sweep, key=lambda r: r["auto_vs_best"])
        add(f"W3 auto within {TARGET_AUTO_VS_BEST - 1:.0%} of the best fixed mode at every density",
            worst["auto_vs_best"], worst["auto_vs_best"] <= TARGET_AUTO_VS_BEST,
            f"worst {worst['auto_vs_best']:.3f}x {worst['best_fixed']} ({worst['case']})")
    at = next((r for r in sweep if r["pattern"] == "blobs" and r["density"] == TARGET_SWEEP_DENSITY), None)
    add(f"W3 auto >= {TARGET_SWEEP_SPEEDUP:g}x at {TARGET_SWEEP_DENSITY:.0%} pixel density",
        at and at["speedup"], bool(at) and at["speedup"] >= TARGET_SWEEP_SPEEDUP, at and f"{at['speedup']:.2f}x")
    networks = _speed_rows(sections, "W5")
    for (model, size), goal in TARGET_NETWORK_SPEEDUP.items():
        row = next((r for r in networks if (r["model"], r["input"], tuple(r["size"])) == (model, "masked", size)), None)
        speedup = row["speedup"] if row else None
        add(f"W5 {model} {size[1]}x{size[0]} masked, batch 1, speed-up >= {goal:g}x", speedup,
            bool(row) and speedup >= goal, row and f"{speedup:.2f}x")
    plain = [r for r in networks if r["input"] == "unmasked"]
    worst = min(plain, key=lambda r: r["speedup"], default=None)
    add(f"W5 every model on unmasked (dense) frames at most {1 - TARGET_NETWORK_DENSE_INPUT:.0%} slower than dense",
        worst and worst["speedup"], bool(worst) and worst["speedup"] >= TARGET_NETWORK_DENSE_INPUT,
        worst and f"worst {worst['speedup']:.3f}x ({worst['model']}; {len(plain)} model{'s' * (len(plain) > 1)})")
    measured = [r for s in sections.values() for r in s["rows"] if r.get("memory_ratio") is not None]
    worst = max(measured, key=lambda r: r["memory_ratio"], default=None)
    add(f"peak memory of a zeroskip call <= {TARGET_MEMORY_RATIO:g}x the dense call's",
        worst and worst["memory_ratio"], bool(worst) and worst["memory_ratio"] <= TARGET_MEMORY_RATIO,
        worst and f"worst {worst['memory_ratio']:.2f}x ({worst['case']})")
    rows = [r for s in sections.values() for r in s["rows"]]
    wrong = [r["case"] for r in rows if not r["exact"]]
    add("every zeroskip output equals dense (assert_close)", len(rows) if rows else None, not wrong,
        f"{len(rows) - len(wrong)}/{len(rows)} cases" + (f"; wrong: {', '.join(wrong)}" if wrong else ""))
    return targets


