"""Differential tests: ``zeroskip.conv2d`` and ``SparseConv2d`` against ``F.conv2d`` on the same weights.

Each test loops over the sparse patterns of ``conftest.PATTERNS`` (all-zero, dense, single pixels at
corners and borders, row and column bands, blobs, scattered pixels, and batches mixing them).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zeroskip

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")

# zeroskip's modes, plus "auto_eager" (auto made to choose sparse paths on small images, see conftest).
MODES = (*zeroskip.MODES, "auto_eager")
SPARSE_MODES = ("auto", "auto_eager", "rows", "tiles")
# For large inputs (plain auto already skips there) and for modules, which take zeroskip's modes only.
LIBRARY_SPARSE_MODES = ("auto", "rows", "tiles")
KERNELS = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (7, 7), (1, 3), (3, 1), (2, 5), (7, 3)]
PADDINGS = [0, 1, 3, (2, 1), (0, 2), "same", "valid"]


def _id(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


@pytest.fixture(autouse=True)
def _each_native_kernel(native_kernel):
    """Every test with each of the native executor's kernels (see conftest's ``native_kernel``)."""


@pytest.fixture(autouse=True)
def _no_grad():
    # Parameters and inputs here do not require grad; no_grad also keeps the sparse paths reachable
    # for the tests that build modules.
    with torch.no_grad():
        yield


@pytest.mark.parametrize("padding", PADDINGS, ids=_id)
@pytest.mark.parametrize("kernel", KERNELS, ids=_id)
@pytest.mark.parametrize("mode", MODES)
def test_kernel_and_padding(mode, kernel, padding, each_pattern, weights, conv_check):
    weight, bias = weights(5, 4, kernel)
    for name, x in each_pattern((5, 4, 17, 22), mode=mode):
        conv_check(x, weight, bias, mode=mode, padding=padding, msg=name)


@pytest.mark.parametrize("padding", [0, (1, 2)], ids=_id)
@pytest.mark.parametrize("dilation", [1, (1, 3), (3, 2)], ids=_id)
@pytest.mark.parametrize("stride", [1, 2, 3, (2, 1), (1, 3)], ids=_id)
@pytest.mark.parametrize("kernel", [(3, 3), (2, 5), (7, 1)], ids=_id)
@pytest.mark.parametrize("mode", MODES)
def test_stride_and_dilation(mode, kernel, stride, dilation, padding, each_pattern, weights, conv_check):
    weight, bias = weights(3, 2, kernel)
    for name, x in each_pattern((3, 2, 19, 23), core=True, mode=mode):
        conv_check(x, weight, bias, mode=mode, stride=stride, padding=padding, dilation=dilation, msg=name)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


# Each layout returns (input, weight) with the originals' values in another memory layout; "expanded_batch"
# repeats the first image with a batch stride of zero.
LAYOUTS = {
    "contiguous": lambda x, w: (x, w),
    "channels_last": lambda x, w: (_channels_last(x), w),
    "channels_last_weight": lambda x, w: (x, _channels_last(w)),
    "channels_last_both": lambda x, w: (_channels_last(x), _channels_last(w)),
    "spatial_slice": lambda x, w: (F.pad(x, (1, 2, 0, 3)).repeat_interleave(2, 3)[:, :, :-3, 2:-4:2], w),
    "channel_slice": lambda x, w: (torch.stack([x, -x], 2).flatten(1, 2)[:, ::2], w),
    "channels_last_slice": lambda x, w: (_channels_last(F.pad(x, (0, 0, 2, 0)))[:, :, 2:], w),
    "transposed": lambda x, w: (x.transpose(2, 3).contiguous().transpose(2, 3), w),
    "expanded_batch": lambda x, w: (x[:1].expand_as(x), w),
    "weight_transposed": lambda x, w: (x, w.transpose(2, 3).contiguous().transpose(2, 3)),
}

LAYOUT_CONVS = {
    "3x3": dict(padding=1),
    "2x5s2": dict(stride=2, padding=(1, 2)),
}


@pytest.mark.parametrize("conv", LAYOUT_CONVS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
def test_dtype_and_layout(mode, layout, conv, dtype, each_pattern, weights, conv_check):
    kernel = (3, 3) if conv == "3x3" else (2, 5)
    weight, bias = weights(6, 3, kernel, dtype=dtype)
    for name, x in each_pattern((3, 3, 19, 24), dtype, core=dtype != torch.float32, mode=mode):
        x_view, w_view = LAYOUTS[layout](x, weight)
        original = x[:1].expand_as(x) if layout == "expanded_batch" else x
        assert torch.equal(w_view, weight) and torch.equal(x_view, original)
        conv_check(x_view, w_view, bias, mode=mode, msg=name, **LAYOUT_CONVS[conv])


GROUPS = {
    # name: (in_channels, out_channels, groups)
    "groups2": (6, 4, 2),
    "groups3": (6, 9, 3),
    "depthwise": (6, 6, 6),
    "depthwise_x2": (6, 12, 6),
    "single_channel": (1, 3, 1),
}


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("conv", [dict(kernel=(3, 3), padding=1), dict(kernel=(5, 4), stride=2, dilation=2, padding=3)],
                         ids=["3x3", "5x4s2d2"])
@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("mode", MODES)
def test_groups(mode, groups, conv, bias, memory_format, each_pattern, weights, conv_check):
    in_channels, out_channels, n_groups = GROUPS[groups]
    conv = dict(conv)
    weight, b = weights(out_channels, in_channels // n_groups, conv.pop("kernel"), bias=bias)
    for name, x in each_pattern((4, in_channels, 18, 21), core=True, mode=mode):
        x = x.contiguous(memory_format=memory_format)
        conv_check(x, weight, b, mode=mode, groups=n_groups, msg=name, **conv)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("batch", [0, 1, 2, 7])
@pytest.mark.parametrize("mode", MODES)
def test_batch_sizes(mode, batch, memory_format, each_pattern, weights, conv_check):
    weight, bias = weights(4, 3, (3, 3))
    for name, x in each_pattern((batch, 3, 15, 20), mode=mode):
        x = x.contiguous(memory_format=memory_format)
        conv_check(x, weight, bias, mode=mode, padding=1, msg=name)
        conv_check(x, weight, bias, mode=mode, stride=2, padding="valid", msg=name)


@pytest.mark.parametrize("conv", [dict(padding=1), dict(stride=2, padding=(0, 3)), dict(padding="same", dilation=2)],
                         ids=["p1", "s2", "same_d2"])
@pytest.mark.parametrize("mode", MODES)
def test_unbatched_input(mode, conv, each_pattern, weights, conv_check):
    weight, bias = weights(4, 3, (3, 4))
    for name, x in each_pattern((1, 3, 16, 19), mode=mode):
        out = conv_check(x[0], weight, bias, mode=mode, msg=name, **conv)
        assert out.dim() == 3


@pytest.mark.parametrize("images_per_chunk", [1, 2, 3])
@pytest.mark.parametrize("mode", ["auto_eager", "tiles"])
def test_batch_split_into_chunks(mode, images_per_chunk, monkeypatch, each_pattern, weights, conv_check):
    """The tile path works through a batch in chunks that reuse one padded buffer; force small chunks."""
    shape = (7, 3, 20, 23)
    monkeypatch.setattr(zeroskip.engine.check, "_CHUNK_BYTES", images_per_chunk * 3 * 20 * 23 * 4)
    weight, bias = weights(4, 3, (3, 5))
    for name, x in each_pattern(shape):
        conv_check(x, weight, bias, mode=mode, padding=(1, 2), msg=name)
        conv_check(x, weight, bias, mode=mode, stride=2, padding=(0, 1), msg=name)


TILE_SIZES = [1, 2, 3, 5, (3, 7), (7, 3), 8, 13, 64, (1, 40), [4, 6]]


@pytest.mark.parametrize("conv", [dict(kernel=(3, 3), padding=1), dict(kernel=(4, 2), stride=2, padding=(2, 0)),
                                  dict(kernel=(3, 5), padding="same", dilation=(2, 1))], ids=["3x3", "4x2s2", "same"])
@pytest.mark.parametrize("tile_size", TILE_SIZES, ids=lambda t: _id(tuple(t)) if isinstance(t, list) else _id(t))
@pytest.mark.parametrize("mode", ["tiles", "auto"])
def test_tile_sizes(mode, tile_size, conv, each_pattern, weights, conv_check):
    conv = dict(conv)
    weight, bias = weights(3, 2, conv.pop("kernel"))
    for name, x in each_pattern((3, 2, 23, 31), core=True, mode=mode):
        conv_check(x, weight, bias, mode=mode, tile_size=tile_size, msg=name, **conv)


NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


@pytest.mark.parametrize("where", ["pixel_top_left", "pixel_center", "pixel_bottom_right", "blobs", "dense"])
@pytest.mark.parametrize("value", NONFINITE)
@pytest.mark.parametrize("mode", MODES)
def test_nonfinite_input(mode, value, where, pattern, weights, conv_check):
    """NaN and Inf are non-zero, so the outputs that read them must be computed (and be NaN/Inf)."""
    x = pattern(where, (3, 2, 14, 17))
    generator = torch.Generator().manual_seed(3)
    hits = (x != 0) & (torch.rand(x.shape, generator=generator) < 0.3)
    hits.view(-1)[x.flatten().nonzero()[0]] = True
    x[hits] = NONFINITE[value]
    for bias in (True, False):
        weight, b = weights(4, 2, (3, 3), bias=bias)
        conv_check(x, weight, b, mode=mode, padding=1, msg=where)
        conv_check(x, weight, b, mode=mode, stride=2, dilation=2, padding=(2, 0), msg=where)


@pytest.mark.parametrize("mode", MODES)
def test_negative_zero_input(mode, weights, conv_check):
    x = torch.full((2, 3, 12, 13), -0.0)
    x[1, :, 5, 6] = 1.0
    weight, bias = weights(4, 3, (3, 3))
    conv_check(x, weight, bias, mode=mode, padding=1)
    conv_check(x, weight, None, mode=mode, padding=1)


PARAMETER_DEFECTS = {
    "weight_inf": ("weight", float("inf")),
    "weight_-inf": ("weight", float("-inf")),
    "weight_nan": ("weight", float("nan")),
    "bias_inf": ("bias", float("inf")),
    "bias_nan": ("bias", float("nan")),
}


@pytest.mark.parametrize("defect", PARAMETER_DEFECTS)
@pytest.mark.parametrize("mode", MODES)
def test_nonfinite_parameters(mode, defect, each_pattern, weights, conv_check):
    """In dense PyTorch ``0 * inf`` is NaN, so a non-finite weight reaches every output: nothing may be skipped."""
    which, value = PARAMETER_DEFECTS[defect]
    weight, bias = weights(4, 2, (3, 3))
    (weight if which == "weight" else bias).view(-1)[1] = value
    for name, x in each_pattern((3, 2, 13, 16), mode=mode):
        conv_check(x, weight, bias, mode=mode, padding=1, msg=name)
        conv_check(x, weight, bias, mode=mode, stride=2, msg=name)


def _reachable(mask: torch.Tensor, kernel, **conv_args) -> torch.Tensor:
    """Bool ``(B, 1, H_out, W_out)``: outputs with at least one kernel tap on a non-zero pixel."""
    ones = torch.ones(1, 1, *kernel, dtype=torch.float64)
    return F.conv2d(mask.double(), ones, **conv_args) > 0


@pytest.mark.parametrize(
    "conv",
    [dict(kernel=(3, 3), padding=1), dict(kernel=(7, 7), stride=2, padding=3), dict(kernel=(2, 5), padding="same"),
     dict(kernel=(3, 3), dilation=3, padding=(4, 1))],
    ids=["3x3", "7x7s2", "2x5same", "3x3d3"],
)
@pytest.mark.parametrize("mode", SPARSE_MODES)
def test_skipped_outputs_are_exactly_bias(mode, conv, each_pattern, weights, conv_check):
    """Outputs whose taps all read zeros equal the bias bit for bit (``torch.equal``), in every mode."""
    conv = dict(conv)
    kernel = conv.pop("kernel")
    for bias in (True, False):
        weight, b = weights(5, 3, kernel, bias=bias)
        for name, x in each_pattern((4, 3, 21, 26)):
            out = conv_check(x, weight, b, mode=mode, msg=name, **conv)
            unreached = ~_reachable(x.ne(0).any(1, keepdim=True), kernel, **conv).expand_as(out)
            fill = (b if bias else torch.zeros(5)).view(1, -1, 1, 1).expand_as(out)
            assert torch.equal(out[unreached], fill[unreached]), f"{name}: skipped outputs differ from the bias"


@pytest.mark.parametrize("mode", SPARSE_MODES)
def test_all_zero_input_is_bias(mode, weights, conv_check):
    weight, bias = weights(8, 3, (7, 7))
    out = conv_check(torch.zeros(2, 3, 40, 33), weight, bias, mode=mode, stride=2, padding=3)
    assert torch.equal(out, bias.view(1, -1, 1, 1).expand_as(out))


def test_auto_decides_per_image(pattern, weights, conv_check):
    """In one batch, the all-zero image is only filled and the dense one goes to F.conv2d."""
    weight, _ = weights(64, 3, (7, 7))
    x = pattern("mixed_batch", (5, 3, 128, 160))
    with zeroskip.profile() as prof:
        conv_check(x, weight, None, mode="auto", stride=2, padding=3)
    ran = prof.records[-1].chosen.split("+")
    assert "fill" in ran and "dense" in ran and len(ran) >= 3, ran


@pytest.mark.parametrize("mode", SPARSE_MODES)
def test_arguments_are_left_unchanged(mode, each_pattern, weights, conv_check):
    weight, bias = weights(4, 3, (3, 3))
    for name, x in each_pattern((3, 3, 17, 20)):
        x[x > 2] = float("nan")
        before = [t.clone() for t in (x, weight, bias)]
        conv_check(x, weight, bias, mode=mode, padding=(2, 1), msg=name)
        for original, argument in zip(before, (x, weight, bias)):
            torch.testing.assert_close(argument, original, rtol=0, atol=0, equal_nan=True)


def test_outputs_are_fresh_tensors(weights, pattern):
    """Each call returns its own output: a later call does not overwrite an earlier result."""
    weight, bias = weights(64, 3, (7, 7))
    first_input, second_input = pattern("blobs", (2, 3, 96, 128), seed=1), pattern("blobs", (2, 3, 96, 128), seed=2)
    for mode in LIBRARY_SPARSE_MODES:
        first = zeroskip.conv2d(first_input, weight, bias, stride=2, padding=3, mode=mode)
        kept = first.clone()
        second = zeroskip.conv2d(second_input, weight, bias, stride=2, padding=3, mode=mode)
        assert torch.equal(first, kept) and first.data_ptr() != second.data_ptr()


def test_large_output_storage_is_resizable_like_dense(weights, pattern):
    weight, _ = weights(64, 3, (7, 7))
    x = pattern("pixel_center", (2, 3, 576, 768))
    dense = F.conv2d(x, weight, None, 2, 3)
    dense.resize_(dense.numel() + 1)
    zeroskip.conv2d(x, weight, None, 2, 3, mode="tiles").resize_(dense.numel() + 1)


def _leaves(x, weight, bias, requires):
    leaves = [t.detach().clone().requires_grad_(name in requires) for name, t in
              (("input", x), ("weight", weight), ("bias", bias))]
    return leaves


@pytest.mark.parametrize("requires", [("input",), ("weight",), ("bias",), ("input", "weight", "bias")], ids="+".join)
@pytest.mark.parametrize("mode", zeroskip.MODES)
def test_autograd_matches_dense(mode, requires, pattern, weights):
    x = pattern("blobs", (3, 3, 16, 18))
    weight, bias = weights(4, 3, (3, 3))
    with torch.enable_grad():
        ours = _leaves(x, weight, bias, requires)
        reference = _leaves(x, weight, bias, requires)
        out = zeroskip.conv2d(*ours, stride=2, padding=1, mode=mode)
        expected = F.conv2d(*reference, stride=2, padding=1)
        assert out.requires_grad
        torch.testing.assert_close(out, expected)
        grad = torch.randn_like(expected)
        out.backward(grad)
        expected.backward(grad)
    for name, mine, theirs in zip(("input", "weight", "bias"), ours, reference):
        if name in requires:
            torch.testing.assert_close(mine.grad, theirs.grad, msg=f"gradient of {name}")


@pytest.mark.parametrize("mode", SPARSE_MODES)
def test_inference_mode(mode, pattern, weights, conv_check):
    weight, bias = weights(4, 3, (3, 3))
    with torch.inference_mode():
        conv_check(pattern("blobs", (2, 3, 16, 16)), weight, bias, mode=mode, padding=1)


@pytest.mark.parametrize("mode", LIBRARY_SPARSE_MODES)
def test_masked_vtest_frames(mode, vtest_frames, weights, conv_check):
    """The original's layer, ``Conv2d(3, 64, 7, 2, 3)``, on real masked frames: a batch, and one frame with bias."""
    weight, bias = weights(64, 3, (7, 7))
    conv_check(vtest_frames, weight, None, mode=mode, stride=2, padding=3, msg="vtest batch")
    conv_check(vtest_frames[1:2], weight, bias, mode=mode, stride=2, padding=3, msg="vtest frame 1")


@pytest.mark.slow
@pytest.mark.parametrize("mode", LIBRARY_SPARSE_MODES)
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_masked_vtest_frames_each(mode, bias, memory_format, vtest_frames, weights, conv_check):
    weight, b = weights(64, 3, (7, 7), bias=bias)
    for index, frame in enumerate(vtest_frames.contiguous(memory_format=memory_format)):
        conv_check(frame[None], weight, b, mode=mode, stride=2, padding=3, msg=f"vtest frame {index}")


VTEST_LAYERS = {
    "1x1": dict(out_channels=8, kernel=(1, 1)),
    "3x3": dict(out_channels=16, kernel=(3, 3), padding=1),
    "5x5s2_groups3": dict(out_channels=12, kernel=(5, 5), stride=2, padding=2, groups=3),
    "3x3d2_same": dict(out_channels=6, kernel=(3, 3), padding="same", dilation=2),
    "7x7s2_nhwc": dict(out_channels=64, kernel=(7, 7), stride=2, padding=3, channels_last=True),
}


@pytest.mark.parametrize("layer", VTEST_LAYERS)
@pytest.mark.parametrize("mode", SPARSE_MODES)
def test_masked_vtest_crops(mode, layer, vtest_frames, weights, conv_check):
    """Other layers on half-resolution masked frames and on crops of them."""
    spec = dict(VTEST_LAYERS[layer])
    groups = spec.get("groups", 1)
    weight, bias = weights(spec.pop("out_channels"), 3 // groups, spec.pop("kernel"))
    frames = vtest_frames[:, :, ::2, ::2]
    if spec.pop("channels_last", False):
        frames = frames.contiguous(memory_format=torch.channels_last)
    for region in (frames, frames[:, :, 100:180, 150:263], frames[:2, :, :37, -41:]):
        conv_check(region, weight, bias, mode=mode, msg=f"crop {tuple(region.shape)}", **spec)


@pytest.mark.parametrize("mode", LIBRARY_SPARSE_MODES)
def test_sparse_module_matches_dense_module(mode, vtest_frames):
    torch.manual_seed(0)
    dense = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    sparse = zeroskip.SparseConv2d.from_dense(dense, mode=mode)
    frames = vtest_frames[:1, :, ::2, ::2]
    expected = dense(frames)
    actual = sparse(frames)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_on_cpu_runs_dense(dtype):
    """PyTorch's CPU kernels give wrong values on some bf16/fp16 geometries, differently for a slice or
    a pre-padded patch than for the whole input: zeroskip runs the dense call itself."""
    x = torch.zeros(1, 2, 1, 13, dtype=dtype)
    x[0, :, 0, 5] = 1.0
    weight = torch.randn(1, 2, 1, 5).to(dtype)
    with zeroskip.profile() as prof:
        out = zeroskip.conv2d(x, weight, None, (1, 2), (5, 0), 3, mode="tiles")
    assert prof.records[-1].chosen == "dense" and "on CPU" in prof.records[-1].detail
    assert torch.equal(out, F.conv2d(x, weight, None, (1, 2), (5, 0), 3))
