"""Hostile tensors and arguments: the result PyTorch gives, or the exception PyTorch raises, never a wrong
number or a crash. (Argument checking proper is in tests/test_geometry.py, non-finite values on every
path in tests/test_conv.py; this module aims at the edges: extreme sizes, empty dimensions, mixed dtypes,
non-tensors through modules and models.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import assert_conv_matches, make_weights

import zeroskip
from zeroskip import SparseConv2d

MODES = (*zeroskip.MODES, "auto_eager")


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _one_hot(shape, *where, value=1.0) -> torch.Tensor:
    x = torch.zeros(shape)
    for index in where:
        x[index] = value
    return x


NONFINITE_IMAGES = {
    "all_nan": lambda: torch.full((2, 3, 9, 11), float("nan")),
    "all_inf": lambda: torch.full((2, 3, 9, 11), float("inf")),
    "inf_and_minus_inf": lambda: _one_hot((2, 3, 9, 11), (0, 0, 4, 5)) * float("inf") - _one_hot((2, 3, 9, 11),
                                                                                                   (0, 0, 4, 6)),
    "nan_in_far_corner": lambda: _one_hot((1, 1, 200, 300), (0, 0, 199, 299), value=float("nan")),
    "max_float": lambda: _one_hot((1, 3, 20, 20), (0, 1, 3, 3), (0, 2, 3, 4), value=torch.finfo(torch.float32).max),
    "subnormal": lambda: _one_hot((1, 3, 20, 20), (0, 1, 10, 10), value=1e-40),
}


@pytest.mark.parametrize("image", NONFINITE_IMAGES)
@pytest.mark.parametrize("mode", MODES)
def test_extreme_values(mode, image):
    x = NONFINITE_IMAGES[image]()
    weight, bias = make_weights(4, x.shape[1], (3, 3))
    assert_conv_matches(x, weight, bias, mode=mode, padding=1, msg=image)
    assert_conv_matches(x, weight, None, mode=mode, stride=2, msg=image)


# (input shape, kernel, conv arguments): 1x1 images and kernels larger than the input, made to fit by padding.
TINY = {
    "1x1_1x1": ((3, 2, 1, 1), (1, 1), {}),
    "1x1_3x3_pad1": ((3, 2, 1, 1), (3, 3), dict(padding=1)),
    "1x1_7x7_pad3_stride2": ((2, 2, 1, 1), (7, 7), dict(padding=3, stride=2)),
    "1x1_same_dilated": ((2, 2, 1, 1), (3, 3), dict(padding="same", dilation=4)),
    "1x1_unbatched": ((2, 1, 1), (3, 1), dict(padding=(1, 0))),
    "2x2_kernel_5x5_pad2": ((2, 2, 2, 2), (5, 5), dict(padding=2)),
    "3x3_kernel_9x9_pad4_stride3": ((2, 2, 3, 3), (9, 9), dict(padding=4, stride=3)),
    "1x40_kernel_5x3_pad_rows": ((2, 2, 1, 40), (5, 3), dict(padding=(2, 1))),
    "40x1_kernel_1x9_pad_cols": ((2, 2, 40, 1), (1, 9), dict(padding=(0, 4))),
    "kernel_exactly_padded_size": ((1, 2, 4, 3), (8, 7), dict(padding=2)),
    "dilated_kernel_larger_than_input": ((2, 2, 3, 4), (3, 3), dict(padding=3, dilation=3)),
}


@pytest.mark.parametrize("case", TINY)
@pytest.mark.parametrize("mode", MODES)
def test_tiny_images_and_kernels_larger_than_the_input(mode, case):
    shape, kernel, conv = TINY[case]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator) * (torch.rand(shape, generator=generator) < 0.5)
    if len(shape) == 4:
        x[0] = 0  # one all-zero image in the batch
    weight, bias = make_weights(3, shape[-3], kernel)
    assert_conv_matches(x, weight, bias, mode=mode, tile_size=(1, 2) if mode == "tiles" else None, msg=case, **conv)


@pytest.mark.parametrize("mode", ["auto", pytest.param("tiles", marks=pytest.mark.slow),
                                  pytest.param("rows", marks=pytest.mark.slow)])
def test_4096x4096_sparse_frame(mode):
    """One channel, a few objects and a lone pixel on the far corner: the sparse paths at a size where
    every index computation must be right, against dense."""
    x = torch.zeros(1, 1, 4096, 4096)
    x[0, 0, 100:160, 2000:2090] = torch.linspace(-1, 1, 90)
    x[0, 0, 2900:2905, :64] = 0.5
    x[0, 0, 4095, 4095] = 3.0
    weight, bias = make_weights(4, 1, (3, 3))
    out = assert_conv_matches(x, weight, bias, mode=mode, padding=1)
    assert out[0, :, 4095, 4095].ne(bias).all()


# Empty dimensions: zeroskip returns what F.conv2d returns (an empty tensor, or the bias where the channel
# sum is empty).
EMPTY = {
    "batch_0": ((0, 3, 8, 8), (4, 3, 3, 3), dict(padding=1)),
    "batch_0_channels_last": ((0, 3, 8, 8), (4, 3, 3, 3), dict(channels_last=True)),
    "zero_in_channels": ((2, 0, 8, 8), (4, 0, 3, 3), dict(padding=1)),
    "zero_in_channels_unbatched": ((0, 8, 8), (4, 0, 3, 3), {}),
    "batch_0_zero_channels": ((0, 0, 5, 5), (2, 0, 1, 1), {}),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", EMPTY)
@pytest.mark.parametrize("mode", MODES)
def test_empty_dimensions(mode, case, bias):
    shape, weight_shape, conv = EMPTY[case]
    conv = dict(conv)
    x = torch.zeros(shape)
    if conv.pop("channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(weight_shape)
    b = torch.randn(weight_shape[0]) if bias else None
    assert_conv_matches(x, weight, b, mode=mode, msg=case, **conv)


def _same_error(dense_call, sparse_call) -> None:
    with pytest.raises(Exception) as dense:
        dense_call()
    with pytest.raises(dense.type) as sparse:
        sparse_call()
    assert str(sparse.value) == str(dense.value)


X, W, B = torch.randn(2, 3, 10, 10) * (torch.rand(2, 3, 10, 10) < 0.1), torch.randn(4, 3, 3, 3), torch.randn(4)

# Calls PyTorch rejects: zeroskip raises the same exception with the same message.
MIXED = {
    "input_float_weight_double": dict(weight=W.double()),
    "input_double_weight_float": dict(input=X.double()),
    "input_bfloat16_weight_float": dict(input=X.bfloat16()),
    "input_half_weight_float": dict(input=X.half()),
    "input_float_weight_bfloat16": dict(weight=W.bfloat16()),
    "bias_double": dict(bias=B.double()),
    "bias_half": dict(bias=B.half()),
    "integer_input": dict(input=X.int()),
    "bool_input_and_weight": dict(input=X.bool(), weight=W.bool(), bias=None),
    "complex_input_float_weight": dict(input=X.to(torch.complex64)),
    "zero_out_channels": dict(weight=torch.zeros(0, 3, 3, 3), bias=None),
    "sparse_coo_input": dict(input=X.to_sparse()),
}


@pytest.mark.parametrize("case", MIXED)
@pytest.mark.parametrize("mode", zeroskip.MODES)
def test_mixed_dtypes_raise_what_pytorch_raises(mode, case):
    arguments = dict(input=X, weight=W, bias=B, padding=1)
    arguments.update(MIXED[case])
    _same_error(lambda: F.conv2d(**arguments), lambda: zeroskip.conv2d(**arguments, mode=mode))


@pytest.mark.parametrize("mode", zeroskip.MODES)
def test_integer_convolution_gives_what_pytorch_gives(mode):
    """CPU F.conv2d accepts int64: zeroskip runs it (densely) to the same integers."""
    x, weight, bias = (X * 10).long(), (W * 10).long(), (B * 10).long()
    assert torch.equal(zeroskip.conv2d(x, weight, bias, padding=1, mode=mode), F.conv2d(x, weight, bias, padding=1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16, torch.int32],
                         ids=["float64", "bfloat16", "float16", "int32"])
def test_module_with_input_of_another_dtype_raises_what_nn_conv2d_raises(dtype):
    torch.manual_seed(0)
    dense = nn.Conv2d(3, 4, 3, padding=1)
    sparse = SparseConv2d.from_dense(dense)
    _same_error(lambda: dense(X.to(dtype)), lambda: sparse(X.to(dtype)))


NON_TENSORS = {
    "none": None,
    "list": X.tolist(),
    "numpy": X.numpy(),
    "float": 1.0,
    "string": "image.png",
    "dict": {"image": X},
}


@pytest.mark.parametrize("value", NON_TENSORS)
def test_non_tensor_input_to_module_and_model(value):
    """A TypeError naming `input` from the module; from a sparsified model, the error the dense model
    raises (the network hooks let a non-tensor through untouched)."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(TypeError, match="`input` must be a torch.Tensor"):
        SparseConv2d.from_dense(dense[0])(NON_TENSORS[value])
    with pytest.raises(Exception) as expected:
        dense(NON_TENSORS[value])
    zeroskip.sparsify_(dense)
    with pytest.raises((expected.type, TypeError)):
        dense(NON_TENSORS[value])


@pytest.mark.parametrize(
    "arguments",
    [dict(weight=W.numpy()), dict(bias=B.tolist()), dict(weight=None), dict(input=np.float32(1.0)),
     dict(stride=torch.tensor(2)), dict(padding=(1.0, 1.0)), dict(groups="1"), dict(dilation=None)],
    ids=["weight_numpy", "bias_list", "weight_none", "input_numpy_scalar", "stride_tensor", "padding_floats",
         "groups_string", "dilation_none"],
)
def test_non_tensor_and_ill_typed_arguments_name_the_argument(arguments):
    call = dict(input=X, weight=W, bias=B, stride=1, padding=1, dilation=1, groups=1)
    call.update(arguments)
    name = next(iter(arguments))
    with pytest.raises((TypeError, ValueError), match=f"`{name}`"):
        zeroskip.conv2d(**call)


@pytest.mark.parametrize("mode", zeroskip.MODES)
def test_meta_tensors_give_the_dense_shape(mode):
    """Meta tensors (shape inference, deferred initialisation) have no values: zeroskip runs F.conv2d."""
    x, weight = torch.empty(2, 3, 17, 19, device="meta"), torch.empty(4, 3, 3, 3, device="meta")
    expected = F.conv2d(x, weight, None, 2, 1)
    out = zeroskip.conv2d(x, weight, None, 2, 1, mode=mode)
    assert out.device.type == "meta" and out.shape == expected.shape and out.stride() == expected.stride()
