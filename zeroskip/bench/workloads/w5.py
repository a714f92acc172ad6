"""W5: zoo models, dense against sparsified."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..frames import raw_frames
from ..networks import network_row
from ..rows import batched
from ..settings import Context


def run(ctx: Context) -> dict:
    """W5: zoo models (:func:`zeroskip.models.build_model`) dense against sparsified, batch 1, on the
    masked frames, on the same resized to 1080p (nearest) and on the unmasked frames."""
    from ...convert import sparsify_
    from ...models import build_model

    settings = ctx.settings
    masked = ctx.frames()[: settings.network_frames]
    cases: dict[str, Callable[[], torch.Tensor]] = {
        "masked": lambda: masked,
        "masked hd": lambda: F.interpolate(masked, size=settings.hd_size, mode="nearest"),
        "unmasked": lambda: raw_frames(settings.video, len(masked), settings.first_frame),
    }
    inputs: dict[str, list[torch.Tensor]] = {}
    rows = []
    for model in dict.fromkeys(settings.network_models + settings.network_hd_models):
        dense = build_model(model)
        sparse = sparsify_(copy.deepcopy(dense))
        wanted = ["masked"] * (model in settings.network_models) + ["masked hd"] * (model in settings.network_hd_models)
        for kind in wanted + ["unmasked"] * (model in settings.network_models):
            if kind not in inputs:
                inputs[kind] = batched(cases[kind](), 1, len(masked))
            height, width = inputs[kind][0].shape[-2:]
            case = f"W5 {model} {width}x{height}" + (" unmasked" if kind == "unmasked" else "")
            rows.append(network_row(ctx, case, model, dense, sparse, inputs[kind],
                                    input=kind.split()[0], size=[height, width]))
    return {
        "title": "W5: whole networks, dense against `zeroskip.sparsify_`, vtest frames, batch 1",
        "kind": "network",
        "rows": rows,
        "notes": [
            "*work*: the fraction of the dense convolutions' multiply-accumulates computed; *active per stage*:"
            " the mean active fraction of the convolutions of each stage (the active region grows with the"
            " receptive field, so deep stages densify); *unmasked*: the raw frames, where nothing can be skipped;"
            " *max error*: the largest difference over the largest output magnitude; *exact*: every output"
            " within assert_close's float32 tolerances, the absolute one scaled by the largest output magnitude.",
        ],
    }

