"""W4: inner layers, on the frame masks reduced to the layer's resolution."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..rows import batched, seeded_layer, speed_row
from ..settings import Context


@dataclass(frozen=True)
class InnerLayer:
    """A W4 layer; its input is the frame mask reduced ``scale`` times, times random positive values."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    scale: int = 4


INNER_LAYERS = (
    InnerLayer("3x3 64->64 s1", 64, 64, 3, padding=1),
    InnerLayer("3x3 128->128 s2", 128, 128, 3, stride=2, padding=1),
    InnerLayer("1x1 256->64", 256, 64, 1),
    InnerLayer("depthwise 3x3 128", 128, 128, 3, padding=1, groups=128),
    InnerLayer("3x3 64->64 dilation 2", 64, 64, 3, padding=2, dilation=2),
)

def run(ctx: Context) -> dict:
    """W4: inner layers; input = the frame's mask reduced to the layer's resolution times random values."""
    frames = ctx.frames()
    mask = frames.ne(0).any(1, keepdim=True).float()
    generator = torch.Generator().manual_seed(4)
    rows = []
    for index, layer in enumerate(INNER_LAYERS):
        size = (frames.shape[-2] // layer.scale, frames.shape[-1] // layer.scale)
        reduced = F.adaptive_max_pool2d(mask, size)
        values = torch.rand(len(frames), layer.in_channels, *size, generator=generator) * 0.9 + 0.1
        x = reduced * values
        conv = seeded_layer(
            layer.in_channels, layer.out_channels, layer.kernel, seed=100 + index, stride=layer.stride,
            padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
        )
        rows.append(speed_row(ctx, f"W4 {layer.name}", conv, batched(x, 1, len(x))))
    return {"title": "W4: inner layers, masks from vtest reduced to the layer's resolution (max-pool), batch 1",
            "kind": "speed", "rows": rows}


