"""W2: the original layer on the masked frames resized to 1080p."""

from __future__ import annotations

import torch.nn.functional as F

from ..rows import batched, original_layer, speed_row
from ..settings import Context


def run(ctx: Context) -> dict:
    """W2: the masked frames resized to 1080p with nearest-neighbour interpolation."""
    conv = original_layer()
    settings = ctx.settings
    count = max([settings.hd_frames] + [b for b in settings.batches if b > 1])
    hd = F.interpolate(ctx.frames()[:count], size=settings.hd_size, mode="nearest")
    rows = [
        speed_row(ctx, f"W2 batch {b}", conv, batched(hd, b, settings.hd_frames)) for b in settings.batches
    ]
    return {"title": f"W2: masked frames at {settings.hd_size[1]}x{settings.hd_size[0]} (nearest)", "kind": "speed",
            "rows": rows}


