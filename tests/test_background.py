"""Background fields: the compact form must equal the whole field through every operation."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from zeroskip._background import Background, aligned


def _check(field: Background, expected: torch.Tensor) -> None:
    """``field`` stores ``expected`` ``(Bb, C, H, W)``: whole, and when filled into a batch."""
    assert field.size == tuple(expected.shape[2:])
    torch.testing.assert_close(field.dense(), expected, equal_nan=True)
    out = torch.full((max(2, expected.shape[0]), *expected.shape[1:]), float("nan"))
    field.fill(out)
    torch.testing.assert_close(out, expected.expand_as(out), equal_nan=True)


def _bordered(channels: int, size: tuple[int, int], seed: int) -> tuple[Background, torch.Tensor]:
    """A constant field after a 5x5 convolution padded by 2 (bands of 2 on every side), and its whole value."""
    generator = torch.Generator().manual_seed(seed)
    field = Background.constant(torch.randn(1, channels, generator=generator), size)
    weight = torch.randn(channels, channels, 5, 5, generator=generator)

    def op(t):
        return F.conv2d(t, weight, None, 1, 2)

    return field.windowed(op, size, (5, 5), (1, 1), (2, 2)), op(field.dense())


def test_constant_field():
    values = torch.tensor([[1.5, -2.0, 0.0]])
    field = Background.constant(values, (4, 7))
    _check(field, values[:, :, None, None].expand(1, 3, 4, 7))
    assert field.core.shape == (1, 3, 1, 1)


@pytest.mark.parametrize("size", [(40, 50), (9, 11), (5, 5), (3, 40), (1, 1)])
def test_convolution_bands(size):
    field, expected = _bordered(3, size, seed=0)
    _check(field, expected)
    if min(size) > 9:
        assert field.rows == (2, 2) and field.cols == (2, 2), "a 5x5 convolution padded by 2 makes bands of 2"
        assert field.core.shape == (1, 3, 5, 5)


def _random_op(rng: random.Random, channels: int, size: tuple[int, int]):
    """A random windowed op valid on ``size``: (function, output size, window, stride, leading pad)."""
    kind = rng.choice(["conv", "conv", "max", "avg"])
    kernel = (rng.choice([1, 2, 3, 5]), rng.choice([1, 3, 4]))
    stride = (rng.choice([1, 1, 2, 3]), rng.choice([1, 2]))
    if kind == "conv":
        dilation = (rng.choice([1, 2]), rng.choice([1, 3]))
        padding = (rng.randint(0, kernel[0] + 1), rng.randint(0, kernel[1]))
        weight = torch.randn(channels, channels // 2, *kernel)
        bias = torch.randn(channels)

        def op(t):
            return F.conv2d(t, weight, bias, stride, padding, dilation, groups=2)

    else:
        dilation = (1, 1)
        padding = (rng.randint(0, kernel[0] // 2), rng.randint(0, kernel[1] // 2))
        ceil_mode = rng.random() < 0.5
        if kind == "max":
            dilation = (rng.choice([1, 2]), 1)

            def op(t):
                return F.max_pool2d(t, kernel, stride, padding, dilation, ceil_mode)

        else:
            include_pad = rng.random() < 0.5

            def op(t):
                return F.avg_pool2d(t, kernel, stride, padding, ceil_mode, include_pad)

    window = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    try:
        out_size = tuple(op(torch.zeros(1, channels, *size)).shape[2:])
    except RuntimeError:
        return None
    return op, out_size, window, stride, padding


def _nearest_sources(size: int, scale: float) -> list[int]:
    """Input row read by each output row of nearest resizing by ``scale`` (none when it would be empty)."""
    if int(size * scale) < 1:
        return []
    index = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1)
    return F.interpolate(index, scale_factor=(scale, 1.0), mode="nearest")[0, 0, :, 0].long().tolist()


@pytest.mark.parametrize("seed", range(12))
def test_random_chains(seed):
    """Chains of convolutions, pools, nearest resizing and alignment, against the whole field."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    channels = 4
    size = (rng.randint(6, 60), rng.randint(6, 60))
    field = Background.constant(torch.randn(1, channels), size)
    expected = field.dense()
    for _ in range(8):
        if rng.random() < 0.15:
            scale = rng.choice([2.0, 3.0, 0.5, 1.5])
            rows, cols = _nearest_sources(size[0], scale), _nearest_sources(size[1], scale)
            if not rows or not cols:
                continue
            field = field.resample(rows, cols)
            expected = F.interpolate(expected, scale_factor=scale, mode="nearest")
        else:
            drawn = _random_op(rng, channels, size)
            if drawn is None:
                continue
            op, out_size, window, stride, pad = drawn
            field = field.windowed(op, out_size, window, stride, pad)
            expected = op(expected)
        size = tuple(expected.shape[2:])
        _check(field, expected)
        other = Background.constant(torch.randn(1, channels), size)
        field, other = aligned([field, other])
        assert field.core.shape == other.core.shape
        _check(field, expected)
        _check(other, other.dense()[:, :, :1, :1].expand_as(expected) if other.rows == (0, 0) else other.dense())


def test_bands_shrink_when_the_edge_effect_vanishes():
    # Max pooling a constant field gives the constant again, also at the borders (padding is -inf).
    field = Background.constant(torch.randn(1, 2), (30, 30))
    pooled = field.windowed(lambda t: F.max_pool2d(t, 3, 2, 1), (15, 15), (3, 3), (2, 2), (1, 1))
    assert pooled.rows == (0, 0) and pooled.cols == (0, 0)


def test_whole_field_when_bands_meet():
    field, _ = _bordered(2, (6, 30), seed=3)
    narrow = field.windowed(lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=True), (6, 30), (3, 3), (1, 1), (1, 1))
    assert narrow.rows == (6, 0), "bands of 3 on a height of 6 leave no interior row"
    _check(narrow, F.avg_pool2d(field.dense(), 3, 1, 1, count_include_pad=True))


def test_batch_of_backgrounds_broadcasts():
    field = Background.constant(torch.randn(3, 2), (5, 6))
    _check(field, field.core.expand(3, 2, 5, 6))
