"""W1: the original system's layer on masked vtest frames, with the time breakdown and the spconv peer."""

from __future__ import annotations

from ..breakdown import breakdown
from ..peer import spconv_peer
from ..rows import batched, original_layer, speed_row
from ..settings import Context


def run(ctx: Context) -> dict:
    """W1: the original layer on masked vtest frames, plus the time breakdown and the spconv peer."""
    conv = original_layer()
    frames = ctx.frames()
    rows = [speed_row(ctx, f"W1 batch {b}", conv, batched(frames, b, len(frames))) for b in ctx.settings.batches]
    section = {"title": "W1: the original layer on masked vtest frames", "kind": "speed", "rows": rows}
    section["breakdown"] = breakdown(batched(frames, 1, len(frames)), conv, rows[0]["zeroskip_ms"])
    stages = section["breakdown"].get("stages", [])
    ctx.log("  breakdown: " + ", ".join(f"{s['stage']} {s['share']:.0%}" for s in stages))
    if ctx.settings.peer and ctx.measures_extras:
        section["peer"] = spconv_peer(ctx, conv, frames)
    return section


