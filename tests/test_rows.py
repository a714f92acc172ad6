"""Row boxes: bands of active output rows cropped to their active columns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zeroskip
from zeroskip import _rows
from zeroskip._geometry import check_conv_args
from zeroskip._rows import _round_out, box_fraction, row_boxes


@pytest.fixture
def unrounded(monkeypatch):
    """Boxes exactly as found, not rounded out to repeat convolution shapes."""
    monkeypatch.setattr(_rows, "_BOX_QUANTUM", 1)


def test_boxes_from_an_exact_activity_map(unrounded):
    activity = torch.zeros(1, 12, 20, dtype=torch.uint8)
    activity[0, 1:3, 4:6] = 1
    activity[0, 8:10, 15:17] = 1
    activity[0, 9, 2] = 1
    boxes = row_boxes(activity.any(2), activity, (1, 1), 20)
    assert boxes == [[(1, 3, 4, 6), (8, 10, 2, 17)]]
    g = check_conv_args(torch.zeros(1, 1, 12, 20), torch.zeros(1, 1, 1, 1), None, 1, 0, 1, 1)
    assert box_fraction(boxes[0], g) == (2 * 2 + 2 * 15) / (12 * 20)


def test_boxes_from_a_tile_map_round_out_to_whole_tiles(unrounded):
    tiles = torch.zeros(2, 3, 4, dtype=torch.bool)
    tiles[0, 1, 2] = True
    rows = torch.zeros(2, 24, dtype=torch.bool)
    rows[0, 9:11] = True
    assert row_boxes(rows, tiles, (8, 5), 18) == [[(9, 11, 10, 15)], []]
    tiles[0, 1, 3] = True  # the ragged last tile column ends at the output width
    assert row_boxes(rows, tiles, (8, 5), 18) == [[(9, 11, 10, 18)]] + [[]]


def test_short_gaps_between_bands_are_merged(unrounded):
    activity = torch.zeros(1, 10, 8, dtype=torch.uint8)
    activity[0, 1, 1] = 1
    activity[0, 4, 6] = 1  # two inactive rows between: one band
    assert row_boxes(activity.any(2), activity, (1, 1), 8) == [[(1, 5, 1, 7)]]


def test_box_sides_round_out_to_repeat_shapes_and_stay_inside():
    assert _round_out(3, 5, 100) == (3, 11)
    assert _round_out(96, 99, 100) == (92, 100)  # grown towards the start at the far edge
    assert _round_out(0, 5, 6) == (0, 6)  # never longer than the map
    assert _round_out(8, 24, 100) == (8, 24)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("stride, padding", [(1, 0), (1, 1), (1, 2), (1, "same"), (2, 0), (2, 1), (2, 2)])
def test_boxes_at_every_border_are_exact(stride, padding):
    """Boxes touching the left, right, top and bottom edges pad exactly as the dense call."""
    x = torch.zeros(2, 3, 30, 41)
    x[0, :, 0:3, 0:4] = torch.randn(3, 3, 4)
    x[0, :, 12:14, 37:41] = torch.randn(3, 2, 4)
    x[1, :, 27:30, 18:22] = torch.randn(3, 3, 4)
    weight, bias = torch.randn(5, 3, 4, 3), torch.randn(5)
    expected = F.conv2d(x, weight, bias, stride, padding)
    torch.testing.assert_close(zeroskip.conv2d(x, weight, bias, stride, padding, mode="rows"), expected)
