"""The report's sample-frame overlay: where the first zeroskip convolution computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn as nn

pytest.importorskip("cv2")

from zeroskip import sparsify_, video  # noqa: E402
from zeroskip.report import first_layer_plan  # noqa: E402


def frame_with_blob() -> np.ndarray:
    frame = np.zeros((96, 128, 3), np.uint8)
    frame[40:50, 60:75] = 200
    frame[80, 5, 1] = 9
    return frame


def covered(boxes, frame: np.ndarray) -> np.ndarray:
    """Bool (H, W): pixels inside at least one box."""
    inside = np.zeros(frame.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        inside[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
    return inside


def stem(mode: str) -> nn.Module:
    return sparsify_(video.build_model("stem"), mode=mode)


@pytest.mark.parametrize("mode", ["tiles", "rows"])
def test_boxes_cover_every_non_zero_pixel_and_little_else(mode):
    frame = frame_with_blob()
    plan = first_layer_plan(stem(mode), frame)
    assert plan.chosen == mode
    assert 0 < plan.computed < plan.total
    inside = covered(plan.boxes, frame)
    assert inside[frame.any(2)].all()
    assert inside.mean() < 0.6
    assert all(0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 96 for x0, y0, x1, y1 in plan.boxes)
    if mode == "rows":
        assert all((x0, x1) == (0, 128) for x0, _, x1, _ in plan.boxes)


def test_boxes_are_scaled_when_the_first_convolution_sees_a_smaller_grid():
    model = sparsify_(nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1)), mode="tiles")
    frame = frame_with_blob()
    plan = first_layer_plan(model, frame)
    assert covered(plan.boxes, frame)[frame.any(2)].all()


@pytest.mark.parametrize(
    # A frame large enough that auto does not find the whole layer too cheap to skip.
    "mode, frame, chosen", [("auto", np.zeros((288, 384, 3), np.uint8), "fill"), ("dense", frame_with_blob(), "dense")]
)
def test_no_boxes_when_nothing_is_skipped_tile_by_tile(mode, frame, chosen):
    model = stem("auto") if mode == "auto" else sparsify_(nn.Sequential(nn.Conv2d(3, 4, 3)), mode=mode)
    plan = first_layer_plan(model, frame)
    assert (plan.chosen, plan.boxes, plan.computed) == (chosen, [], 0)


def test_no_plan_without_a_zeroskip_convolution():
    assert first_layer_plan(nn.Sequential(nn.ReLU()), frame_with_blob()) is None
