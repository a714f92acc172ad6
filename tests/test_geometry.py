"""Geometry: padding arithmetic and argument checking. The property test over random geometry against
``F.conv2d`` is tests/test_fuzz.py (geometry x sparsity x dtype x layout x mode)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zeroskip
from zeroskip._geometry import check_conv_args
from zeroskip.engine import native

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")


def test_same_padding_is_asymmetric_for_even_kernels():
    g = check_conv_args(torch.zeros(1, 1, 9, 9), torch.zeros(1, 1, 4, 2), None, 1, "same", (1, 3), 1)
    assert (g.pad_top, g.pad_bottom, g.pad_left, g.pad_right) == (1, 2, 1, 2)
    assert (g.out_height, g.out_width) == (9, 9)


@pytest.mark.parametrize("mode", ["rows", "tiles"])
def test_a_one_wide_kernel_runs_undilated(mode, monkeypatch):
    """A 1-wide kernel dim has one tap whatever its dilation; every F.conv2d the engine makes runs it at
    dilation 1 there. Gathered patches and bands can be 1 wide, and PyTorch 2.14 reads outside a
    channels_last operand with a bias when the input is narrower than the dilation (see test_fuzz)."""
    g = check_conv_args(torch.zeros(1, 2, 9, 9), torch.zeros(3, 2, 3, 1), None, 1, "same", (2, 3), 1)
    assert g.dilation == (2, 1) and (g.pad_left, g.pad_right) == (0, 0)
    x = torch.zeros(2, 4, 12, 9)
    x[0, :, 5, 4] = 1.0
    x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(6, 4, 3, 1, generator=torch.Generator().manual_seed(0))
    bias = torch.arange(6.0)
    expected = F.conv2d(x, weight, bias, 1, 1, (2, 3))
    # The torch executor: the one that calls F.conv2d on patches and bands.
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_failure", "forced by the test")
    dilations, conv2d = [], F.conv2d

    def spy(input, weight, bias, stride, padding, dilation, groups):
        dilations.append(dilation)
        return conv2d(input, weight, bias, stride, padding, dilation, groups)

    monkeypatch.setattr(F, "conv2d", spy)
    actual = zeroskip.conv2d(x, weight, bias, 1, 1, (2, 3), mode=mode, tile_size=1)
    torch.testing.assert_close(actual, expected)
    assert dilations and all(dilation == (2, 1) for dilation in dilations)


X = torch.zeros(2, 4, 10, 10)
W = torch.zeros(6, 4, 3, 3)
B = torch.zeros(6)

# name: (changes to the arguments, exception, words the message must contain: the argument and the value)
BAD_ARGUMENTS = {
    "input_not_tensor": (dict(input=[[1.0]]), TypeError, ["`input`", "list"]),
    "input_numpy": (dict(input=X.numpy()), TypeError, ["`input`", "ndarray"]),
    "weight_not_tensor": (dict(weight=3.0), TypeError, ["`weight`", "float"]),
    "bias_not_tensor": (dict(bias=[0.0] * 6), TypeError, ["`bias`", "list"]),
    "input_rank_2": (dict(input=torch.zeros(10, 10)), ValueError, ["`input`", "(10, 10)"]),
    "input_rank_5": (dict(input=torch.zeros(1, 2, 4, 10, 10)), ValueError, ["`input`", "(1, 2, 4, 10, 10)"]),
    "weight_rank_3": (dict(weight=torch.zeros(6, 4, 3)), ValueError, ["`weight`", "(6, 4, 3)"]),
    "channel_mismatch": (dict(input=torch.zeros(2, 5, 10, 10)), ValueError, ["`input`", "(2, 5, 10, 10)"]),
    "unbatched_channel_mismatch": (dict(input=torch.zeros(3, 10, 10)), ValueError, ["`input`", "(3, 10, 10)"]),
    "groups_mismatch_in": (dict(groups=3), ValueError, ["`input`", "groups=3", "(2, 4, 10, 10)"]),
    "groups_mismatch_out": (dict(input=torch.zeros(2, 8, 10, 10), weight=torch.zeros(5, 2, 3, 3), bias=None, groups=4),
                            ValueError, ["`weight`", "groups=4", "(5, 2, 3, 3)"]),
    "groups_zero": (dict(groups=0), ValueError, ["`groups`", "0"]),
    "groups_negative": (dict(groups=-2), ValueError, ["`groups`", "-2"]),
    "groups_float": (dict(groups=1.5), (TypeError, ValueError), ["`groups`", "1.5"]),
    "bias_too_long": (dict(bias=torch.zeros(7)), ValueError, ["`bias`", "(7,)"]),
    "bias_too_short": (dict(bias=torch.zeros(5)), ValueError, ["`bias`", "(5,)"]),
    "bias_2d": (dict(bias=torch.zeros(6, 1)), ValueError, ["`bias`", "(6, 1)"]),
    "stride_zero": (dict(stride=0), ValueError, ["`stride`", "0"]),
    "stride_negative": (dict(stride=-1), ValueError, ["`stride`", "-1"]),
    "stride_pair_zero": (dict(stride=(1, 0)), ValueError, ["`stride`", "(1, 0)"]),
    "stride_float": (dict(stride=1.5), TypeError, ["`stride`", "1.5"]),
    "stride_bool": (dict(stride=True), TypeError, ["`stride`", "True"]),
    "stride_triple": (dict(stride=(1, 1, 1)), TypeError, ["`stride`", "(1, 1, 1)"]),
    "padding_negative": (dict(padding=-1), ValueError, ["`padding`", "-1"]),
    "padding_pair_negative": (dict(padding=(0, -2)), ValueError, ["`padding`", "(0, -2)"]),
    "padding_string": (dict(padding="full"), ValueError, ["`padding`", "'full'"]),
    "padding_float": (dict(padding=0.5), TypeError, ["`padding`", "0.5"]),
    "padding_same_strided": (dict(padding="same", stride=2), ValueError, ["`padding`", "same", "2"]),
    "dilation_zero": (dict(dilation=0), ValueError, ["`dilation`", "0"]),
    "dilation_pair_negative": (dict(dilation=(2, -1)), ValueError, ["`dilation`", "(2, -1)"]),
    "kernel_too_large": (dict(weight=torch.zeros(6, 4, 13, 3)), ValueError, ["`weight`", "(13, 3)", "(2, 4, 10, 10)"]),
    "kernel_too_large_dilated": (dict(dilation=(6, 1)), ValueError, ["`weight`", "(6, 1)", "(2, 4, 10, 10)"]),
    "mode_unknown": (dict(mode="fast"), ValueError, ["`mode`", "'fast'"]),
    "mode_none": (dict(mode=None), ValueError, ["`mode`", "None"]),
    "tile_size_zero": (dict(tile_size=0), ValueError, ["`tile_size`", "0"]),
    "tile_size_pair_negative": (dict(tile_size=(4, -4)), ValueError, ["`tile_size`", "(4, -4)"]),
    "tile_size_string": (dict(tile_size="8"), TypeError, ["`tile_size`", "'8'"]),
}


def _call(changes: dict, mode: str) -> torch.Tensor:
    arguments = dict(input=X, weight=W, bias=B, stride=1, padding=1, dilation=1, groups=1, mode=mode, tile_size=None)
    arguments.update(changes)
    return zeroskip.conv2d(**arguments)


@pytest.mark.parametrize("input_kind", ["zeros", "sparse", "dense"])
@pytest.mark.parametrize("mode", zeroskip.MODES)
@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_argument_raises(case, mode, input_kind):
    """Every mode and every kind of input raises the same error: never a result."""
    changes, error, words = BAD_ARGUMENTS[case]
    changes = dict(changes)
    changes.setdefault("mode", mode)
    x = changes.get("input", X)
    if isinstance(x, torch.Tensor) and input_kind != "zeros":
        x = torch.randn(x.shape) * (torch.rand(x.shape) < (0.05 if input_kind == "sparse" else 1.0))
        changes["input"] = x
    with pytest.raises(error) as raised:
        _call(changes, mode)
    message = str(raised.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize(
    "changes",
    [dict(weight=W.double()), dict(bias=B.double()), dict(input=X.int()), dict(input=X.to_sparse())],
    ids=["weight_dtype", "bias_dtype", "integer_input", "sparse_layout"],
)
@pytest.mark.parametrize("mode", zeroskip.MODES)
def test_mistakes_pytorch_rejects_raise_like_pytorch(changes, mode):
    """Mismatched dtypes and unsupported inputs raise what ``F.conv2d`` raises for them."""
    arguments = dict(input=X, weight=W, bias=B, padding=1)
    arguments.update(changes)
    with pytest.raises(Exception) as dense:
        F.conv2d(**arguments)
    with pytest.raises(dense.type):
        zeroskip.conv2d(**arguments, mode=mode)


def test_module_rejects_bad_input():
    conv = zeroskip.SparseConv2d(4, 6, 3)
    with pytest.raises(ValueError, match=r"`input`.*\(2, 3, 10, 10\)"):
        conv(torch.zeros(2, 3, 10, 10))


@pytest.mark.parametrize("mode", ["fast", None, 1])
def test_module_rejects_bad_mode(mode):
    with pytest.raises(ValueError, match="`mode`"):
        zeroskip.SparseConv2d(4, 6, 3, mode=mode)
    conv = torch.nn.Conv2d(4, 6, 3)
    with pytest.raises(ValueError, match="`mode`"):
        zeroskip.SparseConv2d.from_dense(conv, mode=mode)
