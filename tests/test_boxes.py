"""Row boxes: bands of active output rows cropped to their active columns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zeroskip
from zeroskip._geometry import check_conv_args
from zeroskip.engine import boxes as _rows
from zeroskip.engine.boxes import _round_out, box_fraction, row_boxes
from zeroskip.engine.cost import ImageCosts


@pytest.fixture
def unrounded(monkeypatch):
    """Boxes exactly as found, not rounded out to repeat convolution shapes."""
    monkeypatch.setattr(_rows, "_quantum", lambda size: 1)


def costs(call: float = 0.0, halo: tuple[float, float] = (0.0, 0.0)) -> ImageCosts:
    """A layer whose outputs cost 1 each and one more convolution call ``call``."""
    return ImageCosts(
        dense=1e9, fill=0.0, check=0.0, tiles_full=0.0, rows_full=0.0, call=call, pixel=1.0, halo=halo, native_full=0.0
    )


def test_boxes_from_an_exact_activity_map(unrounded):
    activity = torch.zeros(1, 12, 20, dtype=torch.uint8)
    activity[0, 1:3, 4:6] = 1
    activity[0, 8:10, 15:17] = 1
    activity[0, 9, 2] = 1
    boxes = row_boxes(activity.any(2), activity, (1, 1), 20, costs())
    assert sorted(boxes[0]) == [(1, 3, 4, 6), (8, 10, 15, 17), (9, 10, 2, 3)]
    g = check_conv_args(torch.zeros(1, 1, 12, 20), torch.zeros(1, 1, 1, 1), None, 1, 0, 1, 1)
    assert box_fraction(boxes[0], g) == (2 * 2 + 2 * 2 + 1) / (12 * 20)


def test_boxes_split_only_where_the_call_costs_less_than_the_outputs_it_saves(unrounded):
    activity = torch.zeros(1, 12, 20, dtype=torch.uint8)
    activity[0, 2, 1:4] = 1
    activity[0, 2, 10:13] = 1  # 6 inactive columns between, in a box 1 row high
    rows = activity.any(2)
    assert sorted(row_boxes(rows, activity, (1, 1), 20, costs(call=5.0))[0]) == [(2, 3, 1, 4), (2, 3, 10, 13)]
    assert row_boxes(rows, activity, (1, 1), 20, costs(call=7.0)) == [[(2, 3, 1, 13)]]
    # Each part also pays its input halo: 2 columns more here.
    assert row_boxes(rows, activity, (1, 1), 20, costs(call=5.0, halo=(0.0, 2.0))) == [[(2, 3, 1, 13)]]


def test_boxes_from_a_tile_map_round_out_to_whole_tiles(unrounded):
    tiles = torch.zeros(2, 3, 4, dtype=torch.bool)
    tiles[0, 1, 2] = True
    rows = torch.zeros(2, 24, dtype=torch.bool)
    rows[0, 9:11] = True
    assert row_boxes(rows, tiles, (8, 5), 18, costs()) == [[(9, 11, 10, 15)], []]
    tiles[0, 1, 3] = True  # the ragged last tile column ends at the output width
    assert row_boxes(rows, tiles, (8, 5), 18, costs()) == [[(9, 11, 10, 18)]] + [[]]


def test_a_region_without_inactive_bands_is_one_box(unrounded):
    activity = torch.zeros(1, 10, 8, dtype=torch.uint8)
    activity[0, 1:5, 1] = 1
    activity[0, 4, 1:7] = 1  # an L: no inactive row or column splits it
    assert row_boxes(activity.any(2), activity, (1, 1), 8, costs()) == [[(1, 5, 1, 7)]]


def test_large_maps_are_cut_in_merged_blocks(unrounded):
    activity = torch.zeros(1, 300, 200, dtype=torch.uint8)
    activity[0, 10, 7] = 1
    activity[0, 250:252, 150] = 1
    boxes = sorted(row_boxes(activity.any(2), activity, (1, 1), 200, costs())[0])
    # Blocks of 5 x 4 outputs: columns snap to them, rows are trimmed to the exact active rows.
    assert boxes == [(10, 11, 4, 8), (250, 252, 148, 152)]


def test_box_sides_round_out_to_repeat_shapes_and_stay_inside():
    assert _round_out(3, 5, 200) == (3, 11)
    assert _round_out(196, 199, 200) == (192, 200)  # grown towards the start at the far edge
    assert _round_out(0, 130, 132) == (0, 132)  # never longer than the map
    assert _round_out(8, 24, 200) == (8, 24)
    # Small maps (deep layers) round finer: few shapes are possible anyway.
    assert _round_out(3, 5, 40) == (3, 5)
    assert _round_out(3, 6, 64) == (3, 7)


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
