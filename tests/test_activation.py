"""Carrying the inactive region through each kind of layer: exact outputs, and the carry survives
every listed layer type (and ends, exactly, at any other)."""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import eager_costs, make_pattern
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import zeroskip
from zeroskip._background import Background
from zeroskip.activation import SparseActivation, _pool_size, active_boxes, carried, dilate, plain, wrap
from zeroskip.engine import native
from zeroskip.models import randomize_batchnorm_

needs_native = pytest.mark.skipif(native.library() is None, reason=str(native.unavailable_reason()))


class Probe(nn.Module):
    """Identity that records whether its input still carries an activity map."""

    def __init__(self) -> None:
        super().__init__()
        self.carried: list[bool] = []

    def forward(self, x):
        self.carried.append(carried(x) is not None)
        return x


class Residual(nn.Module):
    def __init__(self, channels: int, in_place: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.in_place = in_place

    def forward(self, x):
        y = self.body(x)
        if self.in_place:
            y += x
            return y
        return y + x


class Concat(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(channels, channels // 2, 1)
        self.b = nn.Sequential(nn.Conv2d(channels, channels - channels // 2, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class Lambda(nn.Module):
    def __init__(self, function) -> None:
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


C = 8
# Layers the carry must pass through (the list, and a few more pointwise ones).
CARRIED = {
    "batchnorm": lambda: nn.BatchNorm2d(C),
    "relu": nn.ReLU,
    "relu_inplace": lambda: nn.ReLU(inplace=True),
    "relu6": nn.ReLU6,
    "leaky_relu": lambda: nn.LeakyReLU(0.2, inplace=True),
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "maxpool": lambda: nn.MaxPool2d(3, 2, 1),
    "maxpool_ceil": lambda: nn.MaxPool2d(2, 2, ceil_mode=True),
    "maxpool_dilated": lambda: nn.MaxPool2d(3, 1, 1, dilation=2),
    "avgpool": lambda: nn.AvgPool2d(3, 2, 1),
    "avgpool_exclude_pad": lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
    "adaptive_avgpool": lambda: nn.AdaptiveAvgPool2d((12, 15)),
    "identity": nn.Identity,
    "dropout": nn.Dropout,
    "dropout2d": nn.Dropout2d,
    "upsample_nearest": lambda: nn.Upsample(scale_factor=2, mode="nearest"),
    "upsample_nearest_size": lambda: nn.Upsample(size=(27, 41), mode="nearest"),
    "interpolate_nearest_exact": lambda: Lambda(lambda x: F.interpolate(x, scale_factor=1.5, mode="nearest-exact")),
    "residual_add": lambda: Residual(C, in_place=False),
    "residual_add_inplace": lambda: Residual(C, in_place=True),
    "concat": lambda: Concat(C),
    "scale_and_shift": lambda: Lambda(lambda x: x * torch.linspace(0.5, 2, C).view(1, C, 1, 1) - 0.25),
    "sub_from_scalar": lambda: Lambda(lambda x: 1 - x / 2),
    "clamp": lambda: Lambda(lambda x: x.clamp(-0.5, 0.5)),
}
# Layers that end the carry: the network continues on plain tensors.
ENDING = {
    "groupnorm": lambda: nn.GroupNorm(2, C),
    "bilinear": lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
    "zero_pad": lambda: nn.ZeroPad2d((1, 2, 0, 3)),
    "flip": lambda: Lambda(lambda x: x.flip(-1)),
    "spatial_mul": lambda: Lambda(lambda x: x * torch.linspace(0, 1, x.shape[-1])),
    "reflect_conv": lambda: nn.Conv2d(C, C, 3, padding=1, padding_mode="reflect"),
    "batchnorm_train": lambda: nn.BatchNorm2d(C),
    # Its one output pixel is active as soon as any input pixel is.
    "adaptive_avgpool_global": lambda: nn.AdaptiveAvgPool2d(1),
    "unknown_in_place": lambda: Lambda(lambda x: x.exp_()),
    "setitem": lambda: Lambda(lambda x: x.__setitem__((slice(None), 0, 0, 0), 5.0) or x),
}


def _network(layer: nn.Module, *, train_layer: bool = False) -> tuple[nn.Module, Probe]:
    probe = Probe()
    net = nn.Sequential(
        nn.Conv2d(3, C, 3, padding=1),
        nn.BatchNorm2d(C),
        nn.ReLU(),
        layer,
        probe,
        nn.Conv2d(C, C, 3, stride=2, padding=1),
        nn.BatchNorm2d(C),
        nn.Hardswish(),
        nn.Conv2d(C, 4, 1),
    )
    randomize_batchnorm_(net, torch.Generator().manual_seed(0))
    net.eval()
    layer.train(train_layer)
    return net, probe


def assert_network_matches(dense: nn.Module, x: torch.Tensor, *, eager: bool = False, tile_size=(4, 5)):
    """The sparsified copy of ``dense`` gives the dense output (tolerance scaled to its magnitude)."""
    sparse = zeroskip.sparsify_(copy.deepcopy(dense))
    if eager:
        for module in sparse.modules():
            if isinstance(module, zeroskip.SparseConv2d):
                module.tile_size = tile_size
    with torch.no_grad():
        expected = dense(x)
        with eager_costs() if eager else contextlib.nullcontext():
            actual = sparse(x)
    assert type(actual) is torch.Tensor, "outputs leave the network as plain tensors"
    finite = expected[expected.isfinite()]
    scale = float(finite.abs().max()) if finite.numel() else 1.0
    torch.testing.assert_close(actual, expected, atol=1e-5 * max(scale, 1.0), rtol=1.3e-6, equal_nan=True)
    return sparse


# Small active regions (pixels at the borders and corners, blobs), so that the carry is still worth
# keeping after two layers; the inactive constant reaches every border.
INPUTS = ("pixel_top_left", "pixel_bottom_right", "pixel_right", "pixel_center", "zeros", "mixed_batch")


@pytest.mark.parametrize("eager", [False, True], ids=["auto", "eager"])
@pytest.mark.parametrize("name", list(CARRIED))
def test_carried_layers(name, eager):
    torch.manual_seed(0)
    dense, _ = _network(CARRIED[name]())
    for pattern in INPUTS:
        x = make_pattern(pattern, (5 if pattern == "mixed_batch" else 2, 3, 36, 45), seed=1)
        sparse = assert_network_matches(dense, x, eager=eager)
        probe = sparse[4]
        if pattern != "mixed_batch":  # its dense image ends the carry at the first layer
            assert probe.carried[-1], f"{name} ended the carry on {pattern}"


@pytest.mark.parametrize("name", list(ENDING))
def test_other_layers_end_the_carry_exactly(name):
    torch.manual_seed(0)
    dense, _ = _network(ENDING[name](), train_layer=name == "batchnorm_train")
    for pattern in ("pixel_top_left", "pixel_center"):
        x = make_pattern(pattern, (2, 3, 36, 45), seed=2)
        sparse = assert_network_matches(dense, x, eager=True)
        assert not sparse[4].carried[-1], f"{name} must end the carry"


ALIAS_WRITES = {
    "view": lambda x: x.view(-1).add_(1.0),
    "slice_out": lambda x: torch.add(x[:, :, :4], 1.0, out=x[:, :, :4]),
    "data": lambda x: x.data[:, :, 2:].mul_(2.0),
    "numpy": lambda x: x.numpy().__setitem__((0, 0), 3.0),
}


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("how", list(ALIAS_WRITES))
def test_writes_through_an_alias_end_the_carry(how, context):
    write = ALIAS_WRITES[how]
    dense, _ = _network(Lambda(lambda x: (write(x), x)[1]))
    sparse = zeroskip.sparsify_(copy.deepcopy(dense))
    x = make_pattern("pixel_center", (1, 3, 30, 30))
    with context():
        expected = dense(x)
        actual = sparse(x)
    torch.testing.assert_close(actual, expected)
    assert not sparse[4].carried[-1]


@pytest.mark.parametrize("eager", [False, True], ids=["auto", "eager"])
def test_masked_vtest_crops(vtest_frames, eager):
    """Every carried layer type at once, on masked frames: corner crops and a downscaled frame."""
    torch.manual_seed(0)
    layers = [CARRIED[name]() for name in ("maxpool", "residual_add_inplace", "concat", "silu", "avgpool")]
    dense, _ = _network(nn.Sequential(*layers))
    frames = vtest_frames
    crops = [frames[:, :, :64, :80], frames[:, :, -64:, -80:], F.interpolate(frames, size=(72, 96), mode="nearest")]
    for x in crops:
        assert_network_matches(dense, x, eager=eager)


def test_input_that_is_all_active_is_not_carried():
    dense, _ = _network(nn.ReLU())
    sparse = assert_network_matches(dense, make_pattern("dense", (2, 3, 20, 20)))
    assert sparse[4].carried == [False]


def test_autograd_input_is_not_carried():
    dense, _ = _network(nn.ReLU())
    sparse = zeroskip.sparsify_(copy.deepcopy(dense))
    x = make_pattern("pixel_center", (1, 3, 20, 20)).requires_grad_()
    expected = dense(x)
    actual = sparse(x)
    torch.testing.assert_close(actual, expected)
    assert sparse[4].carried == [False]
    actual.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("dtype", [torch.float64])
def test_float64(dtype):
    dense, _ = _network(Residual(C, in_place=True))
    dense = dense.to(dtype)
    x = make_pattern("pixel_bottom_right", (2, 3, 30, 34), dtype=dtype)
    assert_network_matches(dense, x, eager=True)


def test_channels_last():
    dense, _ = _network(CARRIED["concat"]())
    dense = dense.to(memory_format=torch.channels_last)
    x = make_pattern("pixel_top_left", (2, 3, 30, 34)).to(memory_format=torch.channels_last)
    assert_network_matches(dense, x, eager=True)


def test_functional_conv_keeps_the_carry():
    """zeroskip.conv2d on a carried tensor carries on; any plain op ends the carry."""
    from zeroskip.activation import start

    x = start(make_pattern("pixel_center", (1, 3, 24, 24)))
    weight, bias = torch.randn(5, 3, 3, 3), torch.randn(5)
    with torch.inference_mode():
        y = zeroskip.conv2d(x, weight, bias, padding=1)
        assert isinstance(y, SparseActivation) and carried(y) is not None
        expected = F.conv2d(x.as_subclass(torch.Tensor), weight, bias, padding=1)
        torch.testing.assert_close(y.as_subclass(torch.Tensor), expected)
        z = y.flip(-1)
        assert type(z) is torch.Tensor


def test_sparsify_and_densify_attach_and_detach_the_hooks():
    dense, _ = _network(nn.ReLU())
    sparse = zeroskip.sparsify_(copy.deepcopy(dense))
    x = make_pattern("pixel_center", (1, 3, 20, 20))
    with torch.inference_mode():
        sparse(x)
        zeroskip.densify_(sparse)
        sparse(x)
    assert sparse[4].carried == [True, False]
    assert not any(isinstance(m, zeroskip.SparseConv2d) for m in sparse.modules())


def test_every_pattern_and_batch_mix():
    dense, _ = _network(nn.Sequential(CARRIED["maxpool"](), CARRIED["residual_add"]()))
    for pattern, batch in itertools.product(("blobs", "scatter", "row_band", "column_band", "mixed_batch"), (1, 5)):
        x = make_pattern(pattern, (batch, 3, 41, 39), seed=batch)
        assert_network_matches(dense, x, eager=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_inputs(value):
    layers = [CARRIED[name]() for name in ("maxpool", "residual_add_inplace", "upsample_nearest", "concat")]
    dense, _ = _network(nn.Sequential(*layers))
    x = make_pattern("pixel_center", (2, 3, 36, 45))
    x[0, 1, 5, 40] = value
    x[1, 0, 0, 0] = value
    assert_network_matches(dense, x, eager=True)


@pytest.mark.parametrize("seed", range(30))
def test_dilate_matches_max_pooling(seed):
    generator = torch.Generator().manual_seed(seed)
    draw = functools.partial(torch.randint, generator=generator)
    kernel, stride, dilation = [(int(draw(1, 5, ())), int(draw(1, 5, ()))) for _ in range(3)]
    pad = tuple(int(draw(0, k // 2 + 1, ())) for k in kernel)
    size = (int(draw(8, 30, ())), int(draw(8, 30, ())))
    activity = (torch.rand(2, 1, *size, generator=generator) < 0.05).to(torch.uint8)
    ceil_mode = bool(draw(0, 2, ()))
    try:
        expected = F.max_pool2d(activity.float(), kernel, stride, pad, dilation, ceil_mode).to(torch.uint8)
    except RuntimeError:
        return
    actual = dilate(activity, tuple(expected.shape[2:]), kernel, stride, dilation, pad)
    assert torch.equal(actual, expected)
    axes = zip(size, kernel, stride, pad, dilation)
    assert tuple(_pool_size(*axis, ceil_mode) for axis in axes) == tuple(expected.shape[2:])


def test_active_boxes_cover_the_activity():
    activity = make_pattern("blobs", (3, 1, 40, 50), seed=4).ne(0).to(torch.uint8)
    covered = torch.zeros_like(activity)
    for image, top, bottom, left, right in active_boxes(activity):
        covered[image, 0, top:bottom, left:right] = 1
    assert torch.equal(covered.mul(activity), activity)
    assert covered.sum() < 3 * activity.sum()


def _nans(count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` quiet NaNs with random payloads: which one a maximum keeps shows in its bits."""
    payloads = torch.randint(1, 1 << 20, (count,), generator=generator, dtype=torch.int32)
    return (payloads | 0x7FC00000).view(torch.float32)


def _carried_input(
    generator: torch.Generator, shape: tuple[int, int, int, int], density: float, values: str, broadcast: bool
) -> torch.Tensor:
    """A carried input over a random background field with border bands (or stored whole), and
    other values at a fraction ``density`` of its pixels: ``normal``, ``ties`` (a few small integers,
    +0.0 and -0.0: equal values in most windows) or ``special`` (ties, NaNs and -inf)."""
    batch, channels, height, width = shape

    def bands(size: int) -> tuple[int, int]:
        lead, trail = (int(torch.randint(0, 3, (), generator=generator)) for _ in range(2))
        return (lead, trail) if lead + trail < size else (size, 0)

    rows, cols = bands(height), bands(width)
    core_size = [n if sum(b) >= n else sum(b) + 1 for n, b in zip((height, width), (rows, cols))]
    images = int(torch.randint(1, 3, (), generator=generator)) if batch > 1 else 1
    field = Background(torch.randn(images if images == 1 else batch, channels, *core_size, generator=generator),
                       (height, width), rows, cols)
    active = torch.rand(1 if broadcast else batch, 1, height, width, generator=generator) < density
    active = active.expand(batch, -1, -1, -1)
    if values == "normal":
        other = torch.randn(shape, generator=generator)
    else:
        other = torch.randint(-2, 3, shape, generator=generator).float()
        other[torch.rand(shape, generator=generator) < 0.3] = -0.0
        if values == "special":
            nan = torch.rand(shape, generator=generator) < 0.1
            other[nan] = _nans(int(nan.sum()), generator)
            other[torch.rand(shape, generator=generator) < 0.1] = -float("inf")
    x = torch.where(active, other, field.dense().expand(batch, -1, -1, -1))
    return wrap(x, active.to(torch.uint8), field)


@pytest.mark.parametrize("path", [pytest.param("native", marks=needs_native), "torch"])
@settings(max_examples=150, deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 5),
    size=st.tuples(st.integers(1, 30), st.integers(1, 40)),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    ceil_mode=st.booleans(),
    channels_last=st.booleans(),
    density=st.sampled_from([0.0, 0.02, 0.2, 0.45, 0.9]),
    values=st.sampled_from(["normal", "ties", "special"]),
    broadcast=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sparse_max_pool_equals_dense(
    path, batch, channels, size, kernel, stride, dilation, padding, ceil_mode, channels_last, density, values,
    broadcast, seed,
):
    """Max pooling of a carried input has dense's bits (the first of equal values, the last NaN),
    natively and on the torch path, in the input's memory format."""
    assume(all(p <= k // 2 for p, k in zip(padding, kernel)))
    x = _carried_input(torch.Generator().manual_seed(seed), (batch, channels, *size), density, values, broadcast)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = (kernel, stride, padding, dilation, ceil_mode)
    try:
        expected = F.max_pool2d(plain(x), *args)
    except RuntimeError:  # an output size below one
        assume(False)
    real, written = native.max_pool, []

    def spy(*call):
        written.append(real(*call))
        return written[-1]

    unbuilt = mock.patch.object(native, "library", lambda: None) if path == "torch" else contextlib.nullcontext()
    with unbuilt, mock.patch.object(native, "max_pool", spy), torch.inference_mode():
        actual = F.max_pool2d(x, *args)
    assert torch.equal(plain(actual).view(torch.int32), expected.view(torch.int32))
    sparse = carried(x) is not None and float(carried(x).activity.float().mean()) < 0.5
    assert written == ([path == "native"] if sparse else [])
    if sparse:
        layout = torch.channels_last if channels_last and not x.is_contiguous() else torch.contiguous_format
        assert actual.is_contiguous(memory_format=layout)


def test_failed_forward_leaves_no_state():
    from zeroskip.network import _FORWARDS

    def fail(x):
        raise RuntimeError("boom")

    dense, _ = _network(Lambda(fail))
    sparse = zeroskip.sparsify_(copy.deepcopy(dense))
    for pattern in ("dense", "pixel_center"):
        with pytest.raises(RuntimeError, match="boom"):
            sparse(make_pattern(pattern, (1, 3, 20, 20)))
        assert _FORWARDS.stack == []


def test_dense_forward_skips_the_activity_checks():
    dense, _ = _network(nn.ReLU())
    sparse = zeroskip.sparsify_(copy.deepcopy(dense))
    with torch.inference_mode(), zeroskip.profile() as prof:
        sparse(make_pattern("dense", (1, 3, 40, 40)))
    assert [r.detail for r in prof.records] == ["dense model input"] * 3
