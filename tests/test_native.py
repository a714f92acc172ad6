"""The native activity scan against a brute-force answer, the native carry maps against torch's, the
native max pooling's arguments, and the torch fallback beside them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from native_cover import reachable, written

import zeroskip
from zeroskip._geometry import check_conv_args
from zeroskip.activation import dilate
from zeroskip.engine import check as _check
from zeroskip.engine import native as _native
from zeroskip.engine.plan import carried_maps

needs_native = pytest.mark.skipif(_native.library() is None, reason=str(_native.unavailable_reason()))


@contextlib.contextmanager
def forced_kernel(kernel: int):
    """The native executor with its kernel forced (``_native._KERNEL``), in a hypothesis example, where
    pytest's function-scoped monkeypatch cannot reach."""
    previous, _native._KERNEL = _native._KERNEL, kernel
    try:
        yield
    finally:
        _native._KERNEL = previous


def brute_force(x, g, tile):
    """Per tile and per output row, whether its receptive field (clipped to the image) holds a
    non-zero value."""
    n_i, n_j = -(-g.out_height // tile[0]), -(-g.out_width // tile[1])
    nonzero = x.ne(0).any(1)
    result = torch.zeros(x.shape[0], n_i, n_j, dtype=torch.bool)
    for i in range(n_i):
        top = i * tile[0] * g.stride[0] - g.pad_top
        rows = slice(max(top, 0), max(top + (tile[0] - 1) * g.stride[0] + g.window[0], 0))
        for j in range(n_j):
            left = j * tile[1] * g.stride[1] - g.pad_left
            cols = slice(max(left, 0), max(left + (tile[1] - 1) * g.stride[1] + g.window[1], 0))
            result[:, i, j] = nonzero[:, rows, cols].flatten(1).any(1)
    rows = torch.zeros(x.shape[0], g.out_height, dtype=torch.bool)
    for r in range(g.out_height):
        top = r * g.stride[0] - g.pad_top
        rows[:, r] = nonzero[:, max(top, 0) : max(top + g.window[0], 0)].flatten(1).any(1)
    return result, rows


def sparse_input(shape, density, dtype, layout, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(dtype)
    x = x * (torch.rand(shape[0], 1, *shape[2:], generator=generator) < density)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.cat([x, x], 3)[..., ::2]
    return x


@needs_native
@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 5),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    padding=st.integers(0, 3),
    tile=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    density=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    layout=st.sampled_from(["contiguous", "channels_last", "strided"]),
    seed=st.integers(0, 2**16),
)
def test_native_scan_is_exact(
    batch, channels, height, width, kernel, stride, dilation, padding, tile, density, dtype, layout, seed
):
    x = sparse_input((batch, channels, height, width), density, dtype, layout, seed)
    weight = torch.zeros(2, channels, kernel, kernel, dtype=dtype)
    if min(height, width) + 2 * padding < dilation * (kernel - 1) + 1:
        return  # no output: nothing to scan
    g = check_conv_args(x, weight, None, stride, padding, dilation, 1)
    tiles, rows = brute_force(x, g, tile)
    scanned = _native.scan(x, g, tile)
    assert torch.equal(scanned[0], tiles) and torch.equal(scanned[1], rows)
    # The torch check rounds tile windows out to cells: never fewer tiles, the same rows.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_check, "scan", lambda *args: None)
        checked = _check.measure(x, g, tile)
        assert (checked[0] >= tiles).all() and torch.equal(checked[1], rows)


@needs_native
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e-45, -1.0])
def test_native_scan_special_values(value):
    x = torch.zeros(1, 2, 32, 32)
    x[0, 1, 20, 5] = value
    g = check_conv_args(x, torch.zeros(1, 2, 3, 3), None, 1, 1, 1, 1)
    tiles, rows = _native.scan(x, g, (8, 8))
    assert torch.equal(tiles, brute_force(x, g, (8, 8))[0]) and torch.equal(rows, brute_force(x, g, (8, 8))[1])
    assert tiles.sum() == 1 and rows.sum() == 3


@needs_native
def test_negative_zero_is_inactive():
    x = torch.full((1, 3, 16, 16), -0.0)
    g = check_conv_args(x, torch.zeros(1, 3, 3, 3), None, 1, 1, 1, 1)
    tiles, rows = _native.scan(x, g, (4, 4))
    assert not tiles.any() and not rows.any()


def test_scan_declines_what_it_cannot_read():
    g = check_conv_args(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 3, 3), None, 1, 0, 1, 1)
    assert _native.scan(torch.zeros(1, 1, 8, 8, dtype=torch.complex64), g, (2, 2)) is None
    assert _native.scan(torch.zeros(0, 1, 8, 8), g, (2, 2)) is None


@needs_native
def test_max_pool_declines_or_refuses_what_it_cannot_read():
    """Other dtypes go to torch; maps or cores that do not fit the output are refused, never read."""
    x, out = torch.zeros(2, 3, 8, 8), torch.empty(2, 3, 4, 4)
    activity = torch.ones(2, 1, 4, 4, dtype=torch.uint8)
    field = (torch.zeros(1, 3, 1, 1), (0, 0), (0, 0))
    pool = (2, 2), (2, 2), (1, 1), (0, 0)
    assert not _native.max_pool(x.double(), out.double(), *pool, activity, field)
    assert not _native.max_pool(x, out, *pool, activity.bool(), field)
    for wrong in (activity[:, :, :3], activity[:1]):
        with pytest.raises(ValueError, match="max_pool"):
            _native.max_pool(x, out, *pool, wrong, field)
    for core, rows in ((torch.zeros(1, 2, 1, 1), (0, 0)), (torch.zeros(1, 3, 1, 1), (1, 1))):
        with pytest.raises(ValueError, match="max_pool"):
            _native.max_pool(x, out, *pool, activity, (core, rows, (0, 0)))
    assert _native.max_pool(x, out, *pool, activity, field)
    torch.testing.assert_close(out, F.max_pool2d(x, 2), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["auto", "tiles", "rows"])
def test_torch_check_fallback_is_exact(monkeypatch, mode):
    """Without the native library (no compiler, ZEROSKIP_NATIVE=0) the torch check serves."""
    monkeypatch.setattr(_check, "scan", lambda *args: None)
    x = sparse_input((3, 4, 45, 61), 0.02, torch.float32, "contiguous", 0)
    weight = torch.randn(8, 4, 3, 3)
    bias = torch.randn(8)
    expected = F.conv2d(x, weight, bias, 2, 1)
    torch.testing.assert_close(zeroskip.conv2d(x, weight, bias, 2, 1, mode=mode), expected)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("ZEROSKIP_NATIVE", "0")
    monkeypatch.setattr(_native, "_library", None)
    monkeypatch.setattr(_native, "_failure", None)
    assert _native.library() is None
    assert "ZEROSKIP_NATIVE=0" in _native.unavailable_reason()


def test_build_failure_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(_native, "_library", None)
    monkeypatch.setattr(_native, "_failure", None)
    assert _native.library() is None
    assert "unavailable" in _native.unavailable_reason()
    assert not list(tmp_path.rglob("*.so"))


@needs_native
def test_sampled_scan_ends_dense_images_early():
    weight = torch.randn(64, 3, 7, 7) / 147**0.5  # the original's layer, at the usual initialisation scale
    dense = torch.randn(2, 3, 256, 256)
    sparse = torch.zeros(2, 3, 256, 256)
    sparse[:, :, 100:120, 30:60] = 1.0
    with zeroskip.profile() as calls:
        for x in (dense, sparse):
            torch.testing.assert_close(zeroskip.conv2d(x, weight, None, 2, 3), F.conv2d(x, weight, None, 2, 3))
    assert calls.records[0].chosen == "dense" and calls.records[0].detail.startswith("sampled activity")
    assert calls.records[1].chosen in ("tiles", "rows")


@needs_native
def test_sample_reads_every_fourth_row_of_tiles():
    x = torch.zeros(1, 1, 64, 8)
    x[0, 0, 8:16] = 1.0  # only the second row of 8-row tiles is active: the sample misses it
    g = check_conv_args(x, torch.zeros(1, 1, 1, 1), None, 1, 0, 1, 1)
    assert _check.sample_activity(x, g, (8, 8)).estimates == [(0.0, 0.0)]
    x[0, 0, 32:40] = 1.0  # the fifth row is sampled: one of two sampled rows of tiles
    sample = _check.sample_activity(x, g, (8, 8))
    assert sample.estimates == [(0.5, 0.5)]
    # The full check completes the sample: the rows of tiles it left, scanned into its maps.
    assert [torch.equal(a, b) for a, b in zip(_check.measure(x, g, (8, 8), sample), _native.scan(x, g, (8, 8)))] == [
        True,
        True,
    ]


@needs_native
@pytest.mark.parametrize("height", [8, 40, 64, 72, 200])
def test_sample_and_its_completion_give_the_full_scan(height):
    x = sparse_input((3, 2, height, 40), 0.05, torch.float32, "contiguous", height)
    g = check_conv_args(x, torch.zeros(1, 2, 3, 3), None, 2, 1, 1, 1)
    for tile in ((4, 8), (1, 8)):
        sample = _check.sample_activity(x, g, tile)
        # Fewer than eight units of rows of tiles: the sample is the whole scan.
        tile_rows = -(-g.out_height // tile[0])
        units = -(-tile_rows // _native.scan_unit(tile))
        assert sample.step == (4 if units >= 8 else 1)
        completed = _check.measure(x, g, tile, sample)
        full = _native.scan(x, g, tile)
        assert torch.equal(completed[0], full[0]) and torch.equal(completed[1], full[1])


@needs_native
def test_sample_of_one_row_tiles_reads_every_fourth_unit():
    """Tiles one output row tall are sampled in units of 8 rows of tiles, not one row in four (whose
    receptive fields would cover most of the input)."""
    assert _native.scan_unit((1, 16)) == 8 and _native.scan_unit((8, 16)) == 1
    x = torch.zeros(1, 1, 256, 16)
    x[0, 0, 8:16] = 1.0  # rows 8-15: the second unit of 8 rows, which the sample leaves
    g = check_conv_args(x, torch.zeros(1, 1, 1, 1), None, 1, 0, 1, 1)
    assert _check.sample_activity(x, g, (1, 16)).estimates == [(0.0, 0.0)]
    x[0, 0, 64:68] = 1.0  # rows 64-67: half of the sampled unit 8 (of units 0, 4, 8, 12, 16, 20, 24, 28)
    assert _check.sample_activity(x, g, (1, 16)).estimates == [(4 / 64, 4 / 64)]


_NO_COMPILER_RUN = """
import torch, torch.nn.functional as F, zeroskip
from zeroskip.engine import native
x = torch.zeros(2, 3, 96, 128)
x[:, :, 30:50, 40:70] = torch.rand(2, 3, 20, 30)
weight, bias = torch.randn(16, 3, 7, 7), torch.randn(16)
for mode in ("auto", "tiles", "rows"):
    torch.testing.assert_close(zeroskip.conv2d(x, weight, bias, 2, 3, mode=mode), F.conv2d(x, weight, bias, 2, 3))
print(native.unavailable_reason())
"""


def test_no_compiler_falls_back_and_stays_exact(tmp_path):
    """A fresh process, as on a machine without a C compiler: CC names none and the cache is empty."""
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("ZEROSKIP_NATIVE", None)
    result = subprocess.run(
        [sys.executable, "-c", _NO_COMPILER_RUN], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "native engine unavailable" in result.stdout and "using the torch check" in result.stdout
    assert not list(tmp_path.rglob("*.so"))


@needs_native
@pytest.mark.parametrize(
    "shape, kernel, stride", [((2, 3, 96, 128), 7, 2), ((1, 64, 40, 48), 3, 1), ((1, 256, 20, 24), 3, 1)]
)
def test_native_executor_is_as_accurate_as_dense(shape, kernel, stride):
    """With weights of unit scale (outputs in the tens, sums of thousands of terms) neither float32
    result is exact, but the native one is never further from the float64 result than dense's: equal
    where its order of the sums is oneDNN's (AVX-512), close wherever oneDNN adds in another order."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    weight = torch.randn(64, shape[1], kernel, kernel, generator=generator)
    bias = torch.randn(64, generator=generator)
    padding = kernel // 2
    exact = F.conv2d(x.double(), weight.double(), bias.double(), stride, padding)
    dense = F.conv2d(x, weight, bias, stride, padding)
    with zeroskip.profile() as calls:
        native = zeroskip.conv2d(x, weight, bias, stride, padding, mode="tiles")
    assert calls.records[0].detail.startswith("native")
    assert (native.double() - exact).abs().max() <= 1.1 * (dense.double() - exact).abs().max()


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            return " avx512f" in handle.read()
    except OSError:
        return False


@needs_native
@pytest.mark.skipif(not _has_avx512(), reason="the order of the sums was measured against oneDNN's AVX-512 kernels")
@pytest.mark.parametrize("executor_kernel", [-1, 0, 1], ids=["auto", "pixels", "channels"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "in_channels, out_channels, kernel, stride, bias",
    [(3, 64, 7, 2, False), (3, 64, 7, 2, True), (64, 64, 3, 1, False), (64, 128, 3, 2, True), (512, 512, 3, 1, True),
     (24, 24, 3, 1, True), (64, 128, 1, 2, True), (256, 512, 1, 2, False)],
)
def test_native_sums_in_dense_order(in_channels, out_channels, kernel, stride, bias, threads, executor_kernel,
                                    monkeypatch):
    """The native executor adds the terms in oneDNN's order, with either kernel: its outputs equal
    dense's bit for bit."""
    monkeypatch.setattr(_native, "_KERNEL", executor_kernel)
    generator = torch.Generator().manual_seed(in_channels + kernel)
    size = 8 if in_channels >= 256 else 40
    x = torch.rand(2, in_channels, size, size + 8, generator=generator)
    weight = torch.randn(out_channels, in_channels, kernel, kernel, generator=generator)
    b = torch.randn(out_channels, generator=generator) if bias else None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sparse = zeroskip.conv2d(x, weight, b, stride, kernel // 2, mode="tiles")
        dense = F.conv2d(x, weight, b, stride, kernel // 2)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(sparse, dense, rtol=0, atol=0)


@needs_native
@settings(max_examples=60, deadline=None)
@given(
    images=st.integers(1, 3),
    height=st.integers(1, 6),
    width=st.integers(1, 70),
    active=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_native_computed_lanes_cover_the_active_outputs(images, height, width, active, seed):
    """The executor's lanes per image (the cost model's and the profile's fraction) cover every
    active output of an active row, and are never more than a grid of 16-wide tiles would compute:
    its vectors begin where the active columns do. Its channel kernel (3 x 3, 16 channels) computes
    the active outputs only."""
    generator = torch.Generator().manual_seed(seed)
    tiles = torch.rand(images, height, width, generator=generator) < active
    rows = tiles.any(2) | (torch.rand(images, height, generator=generator) < 0.3)
    lanes = _native.computed(tiles.view(torch.uint8), rows.view(torch.uint8), (height, width), (1, 1), 1, 16)
    outputs = _native.computed(tiles.view(torch.uint8), rows.view(torch.uint8), (height, width), (1, 1), 9, 16)
    grid = tiles[..., : width // 16 * 16].unflatten(2, (-1, 16)).any(3).sum((1, 2)) * 16
    if width % 16:
        grid += tiles[..., width // 16 * 16 :].any(2).sum(1) * (width % 16)
    for image in range(images):
        assert int(tiles[image].sum()) <= lanes[image] <= int(grid[image])
        if _has_avx512():  # the channel kernel's outputs: the active ones
            assert outputs[image] == int(tiles[image].sum())
    with pytest.raises(ValueError, match="native computed needs uint8 maps"):
        _native.computed(tiles[:, :, :-1].view(torch.uint8), rows.view(torch.uint8), (height, width), (1, 1), 1, 16)


@needs_native
@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 40),
    rows=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    cols=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    images=st.integers(1, 2),
    channels_last=st.booleans(),
    active=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
)
def test_native_fill_writes_the_background_field(height, width, rows, cols, images, channels_last, active, seed):
    """Skipped outputs get the carried background field, its border bands included (their columns
    one by one, the interior as one value), on rows with and without computed tiles."""
    from zeroskip._background import Background

    generator = torch.Generator().manual_seed(seed)
    rows = rows if sum(rows) < height else (height, 0)
    cols = cols if sum(cols) < width else (width, 0)
    core = torch.randn(images, 5, min(height, sum(rows) + 1), min(width, sum(cols) + 1), generator=generator)
    field = Background(core, (height, width), rows, cols)
    x = torch.randn(images, 2, height, width, generator=generator)
    weight = torch.randn(5, 2, 1, 1, generator=generator)
    g = check_conv_args(x, weight, None, 1, 0, 1, 1)
    activity = torch.rand(images, height, width, generator=generator) < active
    tiles, active_rows = carried_maps(activity, (1, 4))
    out = torch.full((images, 5, height, width), float("nan"))
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    _native.execute(x, weight, None, out, g, tiles.view(torch.uint8), (1, 4), active_rows.view(torch.uint8),
                    (field.core.contiguous(), rows, cols))
    expected = torch.empty(images, 5, height, width)
    field.fill(expected)
    computed = F.conv2d(x, weight)
    inside = (tiles.repeat_interleave(4, 2)[:, :, :width] & active_rows[:, :, None])[:, None]
    # The computed outputs are dense's up to rounding: on a small input dense's own summation order
    # depends on the CPU (on AMD EPYC one multiply-add of a 1 x 1 kernel is fused or not by shape).
    torch.testing.assert_close(out, _written(out, inside, computed, expected))
    # The background is copied: exact beyond the reach of any computed vector.
    beyond = torch.from_numpy(~reachable(inside.numpy())).expand_as(out)
    assert torch.equal(out[beyond], expected[beyond])


@needs_native
@settings(max_examples=40, deadline=None)
@given(
    out_channels=st.sampled_from([1, 5, 12, 16, 28, 64]),
    width=st.integers(1, 40),
    stride=st.integers(1, 2),
    channels_last=st.booleans(),
    relu=st.booleans(),
    active=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    kernel=st.sampled_from([0, 1]),
)
def test_native_epilogue_folds_batch_norm_and_relu(out_channels, width, stride, channels_last, relu, active, seed,
                                                   kernel):
    """Computed outputs are written as ``fma(value, scale, shift)`` (then ReLU), in every kernel (block
    sizes, a row's partial last vector, strided outputs; channel vectors), NaN kept; skipped ones get
    the background."""
    from zeroskip._background import Background

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 9, width, generator=generator)
    x[0, 1, 2, 0] = float("nan")
    weight = torch.randn(out_channels, 4, 3, 3, generator=generator)
    bias = torch.randn(out_channels, generator=generator)
    scale, shift = torch.randn(out_channels, generator=generator), torch.randn(out_channels, generator=generator)
    g = check_conv_args(x, weight, bias, stride, 1, 1, 1)
    field = Background.constant(torch.randn(1, out_channels, generator=generator), (g.out_height, g.out_width))
    activity = torch.rand(2, g.out_height, g.out_width, generator=generator) < active
    tiles, active_rows = carried_maps(activity, (1, 4))
    out = torch.full((2, out_channels, g.out_height, g.out_width), float("nan"))
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    with forced_kernel(kernel):
        _native.execute(x, weight, bias, out, g, tiles.view(torch.uint8), (1, 4), active_rows.view(torch.uint8),
                        (field.core.contiguous(), (0, 0), (0, 0)), epilogue=(scale, shift, relu))
    computed = F.conv2d(x, weight, bias, stride, 1).double() * scale.double()[:, None, None] + shift.double()[
        :, None, None
    ]
    computed = (computed.relu() if relu else computed).float()
    expected = torch.empty_like(computed)
    field.fill(expected)
    inside = (tiles.repeat_interleave(4, 2)[:, :, : g.out_width] & active_rows[:, :, None])[:, None]
    torch.testing.assert_close(out, _written(out, inside, computed, expected), equal_nan=True)


@needs_native
@pytest.mark.parametrize("where", ["weight", "bias"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("computes", [True, False])
def test_native_execute_reports_non_finite_parameters(where, value, computes):
    """A weight the executor packs or a bias value that is Inf or NaN is reported: the output is not
    dense's (there ``0 * inf`` is NaN). Weights are packed only when something is computed."""
    x = torch.randn(1, 3, 6, 20)
    weight, bias = torch.randn(5, 3, 3, 3), torch.randn(5)
    (weight if where == "weight" else bias).view(-1)[7 % (weight.numel() if where == "weight" else 5)] = value
    g = check_conv_args(x, weight, bias, 1, 1, 1, 1)
    tiles = torch.zeros(1, g.out_height, g.out_width, dtype=torch.uint8)
    tiles[0, 2, 3] = int(computes)
    rows = tiles.amax(2)
    out = torch.empty(1, 5, g.out_height, g.out_width)
    finite = _native.execute(x, weight, bias, out, g, tiles, (1, 1), rows, (bias.view(1, 5, 1, 1), (0, 0), (0, 0)))
    assert finite == (where == "weight" and not computes)
    weight, bias = weight.nan_to_num(), bias.nan_to_num()
    assert _native.execute(x, weight, bias, out, g, tiles, (1, 1), rows, (bias.view(1, 5, 1, 1), (0, 0), (0, 0)))


def _written(out: torch.Tensor, planned: torch.Tensor, computed: torch.Tensor, skipped: torch.Tensor) -> torch.Tensor:
    """:func:`native_cover.written` on tensors."""
    return torch.from_numpy(written(out.numpy(), planned.numpy(), computed.numpy(), skipped.numpy()))


def _torch_only():
    """The library as where it is not built: every native function declines, torch serves."""
    return mock.patch.object(_native, "library", lambda: None)


@needs_native
@settings(deadline=None)
@given(
    batch=st.integers(1, 3),
    size=st.tuples(st.integers(1, 90), st.integers(1, 90)),
    kernel=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pad=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    # Pooling with ceil_mode has one output more than the windows that fit, a caller may ask fewer.
    extra=st.tuples(st.integers(-1, 1), st.integers(-1, 1)),
    density=st.sampled_from([0.0, 0.02, 0.2, 1.0]),
    values=st.sampled_from(["ones", "bytes"]),
    layout=st.sampled_from(["contiguous", "broadcast", "strided"]),
    tile=st.tuples(st.integers(1, 9), st.integers(1, 20)),
    seed=st.integers(0, 2**16),
)
def test_native_carry_maps_equal_torch(
    batch, size, kernel, stride, dilation, pad, extra, density, values, layout, tile, seed
):
    """The native dilation, tile map and active rows of a carried activity are torch's, byte for byte."""
    axes = zip(size, kernel, stride, dilation, pad, extra)
    out_size = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 + e for n, k, s, d, p, e in axes)
    assume(min(out_size) >= 1)
    generator = torch.Generator().manual_seed(seed)
    activity = (torch.rand(batch, 1, *size, generator=generator) < density).to(torch.uint8)
    if values == "bytes":
        # Maps are 0 and 1, but both sides take a maximum, not an OR: any byte must come out the same.
        activity *= torch.randint(1, 256, activity.shape, generator=generator, dtype=torch.uint8)
    if layout == "broadcast":
        activity = activity[:1].expand(batch, -1, -1, -1)
    elif layout == "strided":
        activity = torch.cat([activity, activity], 3)[..., ::2]
    args = (out_size, kernel, stride, dilation, pad)
    with _torch_only():
        expected = dilate(activity, *args)
        expected_maps = carried_maps(expected[:, 0], tile)
    dilated = dilate(activity, *args)
    assert dilated.dtype == torch.uint8 and torch.equal(dilated, expected)
    maps = _native.carried_maps(dilated[:, 0], tile)
    assert maps is not None and all(torch.equal(a, b) for a, b in zip(maps, expected_maps))


@needs_native
def test_native_dilate_declines_kernels_beyond_its_taps():
    activity = (torch.rand(2, 1, 3, 80, generator=torch.Generator().manual_seed(0)) < 0.1).to(torch.uint8)
    args = ((3, 16), (1, 65), (1, 1), (1, 1), (0, 0))
    assert _native.dilate(activity, *args) is None
    with _torch_only():
        assert torch.equal(dilate(activity, *args), F.max_pool2d(activity.float(), (1, 65), 1).to(torch.uint8))


def test_carry_maps_without_the_library_run_torch():
    activity = torch.zeros(2, 1, 9, 11, dtype=torch.uint8)
    activity[1, 0, 4, 5] = 1
    with _torch_only():
        assert _native.dilate(activity, (9, 11), (3, 3), (1, 1), (1, 1), (1, 1)) is None
        assert _native.carried_maps(activity[:, 0], (2, 4)) is None
        dilated = dilate(activity, (9, 11), (3, 3), (1, 1), (1, 1), (1, 1))
        tiles, rows = carried_maps(dilated[:, 0], (2, 4))
    assert dilated.sum() == 9 and dilated[1, 0, 3:6, 4:7].all()
    # Output rows 3-5 and columns 4-6 are active: rows of tiles 1 and 2, column of tiles 1.
    assert tiles[0].sum() == 0 and tiles[1].nonzero().tolist() == [[1, 1], [2, 1]]
    assert rows.tolist() == [[False] * 9, [False] * 3 + [True] * 3 + [False] * 3]


@needs_native
def test_the_plan_says_when_short_passes_ran_on_fewer_threads(monkeypatch):
    """After threads began a pass late, the next short passes take the ones that were on time; the
    profile's plan detail says so (its C state needs a loaded machine, so it is stood in for here)."""
    assert _native.thread_limit() >= 0
    x = torch.zeros(1, 3, 32, 32)
    x[0, :, 10:14, 10:14] = 1.0
    weight = torch.randn(8, 3, 3, 3)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(_native, "thread_limit", lambda: 1)
        with zeroskip.profile() as prof:
            zeroskip.conv2d(x, weight, None, 1, 1, mode="tiles")
        monkeypatch.setattr(_native, "thread_limit", lambda: 0)
        with zeroskip.profile() as quiet:
            zeroskip.conv2d(x, weight, None, 1, 1, mode="tiles")
    finally:
        torch.set_num_threads(previous)
    assert "short passes on 1 of 2 threads (others began late)" in prof.records[-1].detail
    assert "short passes" not in quiet.records[-1].detail
