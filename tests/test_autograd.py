"""Autograd: with gradients recorded, the forward still skips zeros and the gradients are dense PyTorch's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import make_pattern, make_weights

import zeroskip
from zeroskip.autograd import SparseConv2dFunction

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")

# Geometries that stress the backward: strides, asymmetric "same" padding, dilation, groups, no bias.
CONFIGS = [
    dict(stride=1, padding=1),
    dict(stride=2, padding=3),
    dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2)),
    dict(stride=1, padding="same", dilation=2),
    dict(stride=1, padding="valid"),
]
KERNELS = {0: (3, 3), 1: (7, 7), 2: (3, 2), 3: (4, 3), 4: (2, 2)}


def _run(fn, leaves):
    """``fn(*leaves)`` under grad mode and profiling: the output and what ran."""
    with torch.enable_grad(), zeroskip.profile() as prof:
        out = fn(*leaves)
    return out, prof.records


def _leaves(*tensors, requires=(True, True, True)):
    return [
        None if t is None else t.detach().clone().requires_grad_(r) for t, r in zip(tensors, requires)
    ]


@pytest.mark.parametrize("mode", ["tiles", "rows"])
@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_forward_skips_and_gradients_equal_dense(index, mode):
    conv_args = CONFIGS[index]
    x = make_pattern("blobs", (2, 4, 20, 23), seed=index)
    weight, bias = make_weights(6, 4, KERNELS[index], bias=index != 2)
    ours, theirs = _leaves(x, weight, bias), _leaves(x, weight, bias)
    out, records = _run(lambda *t: zeroskip.conv2d(*t, mode=mode, tile_size=(3, 4), **conv_args), ours)
    expected = F.conv2d(*theirs, **conv_args)
    (record,) = records
    assert record.chosen in (mode, "fill") and record.active_fraction < 1.0, record
    assert record.detail.endswith("autograd")
    assert type(out.grad_fn).__name__ == "SparseConv2dFunctionBackward"
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(expected)
    (out * grad).sum().backward()
    (expected * grad).sum().backward()
    for name, mine, reference in zip(("input", "weight", "bias"), ours, theirs):
        if reference is not None:
            torch.testing.assert_close(mine.grad, reference.grad, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("requires", [(True, False, False), (False, True, False), (False, False, True)],
                         ids=["input", "weight", "bias"])
def test_only_the_tensors_that_require_grad_get_one(requires):
    x = make_pattern("pixel_center", (1, 3, 16, 16))
    weight, bias = make_weights(4, 3, (3, 3))
    leaves = _leaves(x, weight, bias, requires=requires)
    out, (record,) = _run(lambda *t: zeroskip.conv2d(*t, padding=1, mode="tiles", tile_size=4), leaves)
    assert record.chosen == "tiles"
    out.sum().backward()
    assert [t.grad is not None for t in leaves] == list(requires)


def test_unbatched_input():
    x = make_pattern("blobs", (1, 3, 16, 18))[0]
    weight, bias = make_weights(4, 3, (3, 3))
    ours, theirs = _leaves(x, weight, bias), _leaves(x, weight, bias)
    out, _ = _run(lambda *t: zeroskip.conv2d(*t, stride=2, padding=1, mode="rows"), ours)
    expected = F.conv2d(*theirs, stride=2, padding=1)
    assert out.shape == expected.shape
    out.sum().backward()
    expected.sum().backward()
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine.grad, reference.grad)


@pytest.mark.parametrize("mode", ["tiles", "rows"])
def test_gradcheck_float64(mode):
    x = make_pattern("pixel_bottom_right", (2, 2, 7, 8), dtype=torch.float64)
    weight, bias = make_weights(3, 2, (3, 3), dtype=torch.float64)
    leaves = _leaves(x, weight, bias)

    def conv(*tensors):
        return zeroskip.conv2d(*tensors, stride=2, padding=1, mode=mode, tile_size=2)

    _, (record,) = _run(conv, leaves)
    assert record.chosen == mode, record
    assert torch.autograd.gradcheck(conv, leaves)


def test_auto_mode_skips_under_autograd():
    """The default mode, on a frame large enough to be worth skipping, with gradients recorded."""
    x = make_pattern("row_band", (2, 3, 288, 384), seed=2)
    weight, bias = make_weights(64, 3, (7, 7))
    ours, theirs = _leaves(x, weight, bias), _leaves(x, weight, bias)
    out, (record,) = _run(lambda *t: zeroskip.conv2d(*t, stride=2, padding=3), ours)
    assert record.chosen in ("tiles", "rows") and record.active_fraction < 0.5, record
    expected = F.conv2d(*theirs, stride=2, padding=3)
    out.sum().backward()
    expected.sum().backward()
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine.grad, reference.grad)


def test_gradgradcheck_float64():
    x = make_pattern("blobs", (1, 2, 6, 7), dtype=torch.float64)
    weight, bias = make_weights(2, 2, (2, 3), dtype=torch.float64)

    def conv(*tensors):
        return zeroskip.conv2d(*tensors, padding="same", mode="tiles", tile_size=2)

    assert torch.autograd.gradgradcheck(conv, _leaves(x, weight, bias))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_module_gradients_equal_nn_conv2d(padding_mode):
    torch.manual_seed(0)
    dense = nn.Conv2d(3, 8, 5, stride=2, padding=2, groups=1, padding_mode=padding_mode)
    sparse = zeroskip.SparseConv2d.from_dense(copy.deepcopy(dense), mode="tiles")
    x = make_pattern("row_band", (2, 3, 24, 30))
    inputs = _leaves(x), _leaves(x)
    with torch.enable_grad():
        for module, (leaf,) in zip((dense, sparse), inputs):
            module(leaf).square().sum().backward()
    torch.testing.assert_close(inputs[1][0].grad, inputs[0][0].grad)
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=lambda m, name=name: f"{name}: {m}")


def test_sparsified_model_skips_under_autograd_and_says_why_calls_ran_dense():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1, bias=False))
    sparse = zeroskip.sparsify_(copy.deepcopy(dense), mode="tiles")
    x = make_pattern("pixel_center", (1, 3, 24, 24))
    with torch.enable_grad(), zeroskip.profile() as prof:
        sparse(x).sum().backward()
    dense(x).sum().backward()
    assert [r.chosen for r in prof.records] == ["tiles", "tiles"]
    for p, q in zip(dense.parameters(), sparse.parameters()):
        torch.testing.assert_close(q.grad, p.grad)
    summary = prof.summary()
    assert "plan or reason" in summary and "autograd" in summary
    assert "torch.no_grad()" in summary.splitlines()[-1]


def test_function_is_used_only_when_a_gradient_is_needed():
    x = make_pattern("blobs", (1, 3, 16, 16))
    weight, bias = make_weights(4, 3, (3, 3))
    with torch.enable_grad():
        assert zeroskip.conv2d(x, weight, bias, padding=1).grad_fn is None
        out = zeroskip.conv2d(x, weight.requires_grad_(), bias, padding=1)
    assert isinstance(out.grad_fn, SparseConv2dFunction._backward_cls)
    with torch.no_grad():
        assert zeroskip.conv2d(x, weight, bias, padding=1).grad_fn is None
