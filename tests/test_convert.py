"""``SparseConv2d`` as a drop-in ``nn.Conv2d``, and whole-model conversion with ``sparsify_``/``densify_``."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn

import zeroskip
from zeroskip import SparseConv2d

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")

MODULE_CONFIGS = {
    "3x3": dict(kernel_size=3, padding=1),
    "7x7s2": dict(kernel_size=7, stride=2, padding=3, bias=False),
    "2x4same": dict(kernel_size=(2, 4), padding="same"),
    "5x3d2": dict(kernel_size=(5, 3), padding=(2, 3), dilation=2),
    "depthwise": dict(kernel_size=3, padding=2, groups=4),
    "valid_s2": dict(kernel_size=3, stride=(2, 1), padding="valid"),
}


def _pair_of_modules(config: str, padding_mode: str, mode: str, **factory) -> tuple[nn.Conv2d, SparseConv2d]:
    arguments = dict(MODULE_CONFIGS[config], padding_mode=padding_mode, **factory)
    torch.manual_seed(0)
    dense = nn.Conv2d(4, 8, **arguments)
    torch.manual_seed(0)
    sparse = SparseConv2d(4, 8, mode=mode, **arguments)
    return dense, sparse


@pytest.mark.parametrize("mode", zeroskip.MODES)
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("config", MODULE_CONFIGS)
def test_constructor_matches_nn_conv2d(config, padding_mode, mode, each_pattern):
    """Same initial parameters as ``nn.Conv2d`` from the same seed, and the same output, for every padding mode."""
    dense, sparse = _pair_of_modules(config, padding_mode, mode)
    assert isinstance(sparse, nn.Conv2d) and sparse.padding_mode == padding_mode
    assert dense.state_dict().keys() == sparse.state_dict().keys()
    for key, value in dense.state_dict().items():
        assert torch.equal(value, sparse.state_dict()[key])
    with torch.no_grad():
        for name, x in each_pattern((3, 4, 13, 17), core=True):
            torch.testing.assert_close(sparse(x), dense(x), msg=lambda m, name=name: f"{name}: {m}")
            torch.testing.assert_close(sparse(x[0]), dense(x[0]), msg=lambda m, name=name: f"{name} unbatched: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_constructor_device_and_dtype(dtype, pattern):
    dense, sparse = _pair_of_modules("3x3", "zeros", "tiles", device="cpu", dtype=dtype)
    assert sparse.weight.dtype == dtype and sparse.bias.dtype == dtype
    assert sparse.weight.device.type == "cpu"
    x = pattern("blobs", (2, 4, 12, 12), dtype)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense(x))


def test_constructor_keeps_mode_and_tile_size():
    conv = SparseConv2d(3, 5, 3, mode="rows", tile_size=(4, 8))
    assert conv.mode == "rows" and conv.tile_size == (4, 8)
    assert "mode='rows'" in repr(conv)


@pytest.mark.parametrize("mode", zeroskip.MODES)
def test_from_dense_shares_parameters(mode, pattern):
    torch.manual_seed(0)
    dense = nn.Conv2d(3, 6, 3, padding=1)
    sparse = SparseConv2d.from_dense(dense, mode=mode)
    assert type(dense) is nn.Conv2d, "from_dense must leave its argument an nn.Conv2d"
    assert sparse.weight is dense.weight and sparse.bias is dense.bias
    assert sparse.mode == mode
    x = pattern("blobs", (2, 3, 10, 11))
    with torch.no_grad():
        dense.weight.mul_(2)
        torch.testing.assert_close(sparse(x), dense(x))
        dense.bias.fill_(float("inf"))
        torch.testing.assert_close(sparse(x), dense(x), equal_nan=True)


def test_from_dense_copy_is_independent(pattern):
    torch.manual_seed(0)
    dense = nn.Conv2d(3, 6, 3, padding=1)
    sparse = SparseConv2d.from_dense(dense, copy=True)
    assert sparse.weight is not dense.weight and sparse.bias is not dense.bias
    assert sparse.weight.data_ptr() != dense.weight.data_ptr()
    assert torch.equal(sparse.weight, dense.weight) and torch.equal(sparse.bias, dense.bias)
    assert sparse.weight.requires_grad and isinstance(sparse.weight, nn.Parameter)
    x = pattern("blobs", (2, 3, 10, 11))
    with torch.no_grad():
        before = dense(x)
        dense.weight.zero_()
        torch.testing.assert_close(sparse(x), before)
    # The module dictionaries are the converted module's own as well.
    sparse.register_buffer("extra", torch.zeros(1))
    assert "extra" not in dense.state_dict()


def test_from_dense_rejects_other_modules():
    with pytest.raises(TypeError, match=r"`conv`.*Linear"):
        SparseConv2d.from_dense(nn.Linear(2, 3))


def test_parametrized_conv_is_rejected_or_left_dense(pattern):
    """A parametrized weight (weight_norm, spectral_norm) lives on a generated class: from_dense says so,
    and sparsify_ leaves the module as it is."""
    torch.manual_seed(0)
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(TypeError, match=r"`conv`.*parametriz.*ParametrizedConv2d"):
        SparseConv2d.from_dense(conv)
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(4, 4, 3))
    x = pattern("blobs", (2, 3, 16, 16))
    with torch.no_grad():
        expected = model(x)
        zeroskip.sparsify_(model)
        assert model[0] is conv and isinstance(model[2], SparseConv2d)
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_keys_unchanged_and_loadable_both_ways(bias):
    torch.manual_seed(0)
    dense = nn.Conv2d(3, 6, 3, bias=bias)
    sparse = SparseConv2d(3, 6, 3, bias=bias)
    assert list(sparse.state_dict()) == list(dense.state_dict())
    sparse.load_state_dict(dense.state_dict())
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in sparse.state_dict().items())
    torch.manual_seed(1)
    other = SparseConv2d.from_dense(nn.Conv2d(3, 6, 3, bias=bias))
    dense.load_state_dict(other.state_dict())
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in dense.state_dict().items())


_UNTRACKED = pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="writes through .data do not bump the parameter's version: cached facts about the weights go stale"
    " (sparsify_ again renews them)",
)
PARAMETER_CHANGES = ["in_place", "replace", "load_state_dict", "assign_data", "data"]


def _change_parameters(conv: nn.Conv2d, change: str, value: float) -> None:
    """Change ``conv``'s weight (and bias) after it has run, in one of the ways PyTorch code does."""
    with torch.no_grad():
        if change == "in_place":
            conv.weight[1, 2, 0, 0] = value
            conv.bias.add_(0.5)
        elif change == "replace":
            conv.weight = nn.Parameter(conv.weight.clone().index_fill_(0, torch.tensor([1]), value))
        elif change == "load_state_dict":
            conv.load_state_dict({"weight": conv.weight.clone().fill_(value), "bias": conv.bias + 0.5})
        elif change == "assign_data":
            conv.weight.data = conv.weight.data.clone().fill_(value)
        else:
            conv.weight.data[1, 2, 0, 0] = value
            conv.bias.data.add_(0.5)


@pytest.mark.parametrize("change", PARAMETER_CHANGES)
def test_parameter_changes_after_a_call_are_seen(change, pattern):
    """Non-finite weights make the layer dense; the cached check must notice every way of changing them."""
    conv = SparseConv2d(3, 4, 3, padding=1, mode="tiles")
    x = pattern("pixel_center", (1, 3, 64, 96))
    with torch.no_grad():
        assert not conv(x).isnan().any()
        _change_parameters(conv, change, float("inf"))
        expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
        torch.testing.assert_close(conv(x), expected, equal_nan=True)
        assert expected.isnan().any()


@pytest.mark.parametrize(
    "change", [*PARAMETER_CHANGES[:-1], pytest.param("data", marks=_UNTRACKED), "data, then sparsify_ again"]
)
def test_parameter_changes_reach_the_sparsified_network(change, pattern):
    """The whole-network carry keeps each convolution's output background and the folded BatchNorm
    coefficients; changed parameters must renew them. Writes through ``.data`` bump no version counter
    (the xfail): calling sparsify_ again computes everything kept anew."""
    dense = _randomize_batch_norms(_Everything()).eval()
    sparse = zeroskip.sparsify_(copy.deepcopy(dense), mode="tiles")
    x = pattern("blobs", (2, 3, 64, 80))
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense(x))
        for model in (dense, sparse):
            _change_parameters(model.c3, change.split(",")[0], 0.25)
        if change.endswith("again"):
            zeroskip.sparsify_(sparse, mode="tiles")
        torch.testing.assert_close(sparse(x), dense(x))


def _names_of(model: nn.Module, cls: type) -> list[str]:
    return [name for name, module in model.named_modules() if type(module) is cls]


class _Custom(nn.Conv2d):
    """A user subclass: its own forward may differ, so sparsify_ leaves it alone."""


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)),
        _Custom(4, 4, 3, padding=1),
    ).eval()


def test_sparsify_converts_every_conv_in_place(pattern):
    model = _model()
    dense_names = _names_of(model, nn.Conv2d)
    keys = list(model.state_dict())
    x = pattern("blobs", (2, 3, 20, 20))
    with torch.no_grad():
        expected = model(x)
        assert zeroskip.sparsify_(model, mode="tiles") is model
        assert _names_of(model, SparseConv2d) == dense_names == ["0", "2.0", "2.2"]
        assert _names_of(model, _Custom) == ["3"]
        assert all(module.mode == "tiles" for module in model.modules() if isinstance(module, SparseConv2d))
        assert list(model.state_dict()) == keys
        torch.testing.assert_close(model(x), expected)


def test_sparsify_filter_fn_gets_module_and_qualified_name():
    model = _model()
    seen = []

    def only_grouped(module, name):
        seen.append((type(module), name))
        return module.groups > 1

    zeroskip.sparsify_(model, filter_fn=only_grouped)
    assert seen == [(nn.Conv2d, "0"), (nn.Conv2d, "2.0"), (nn.Conv2d, "2.2")]
    assert _names_of(model, SparseConv2d) == ["2.0"]
    assert _names_of(model, nn.Conv2d) == ["0", "2.2"]


def test_shared_modules_stay_shared(pattern):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    block = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
    model = nn.Sequential(conv, block, conv, block).eval()
    x = pattern("blobs", (2, 3, 16, 16))
    seen = []
    with torch.no_grad():
        expected = model(x)
        zeroskip.sparsify_(model, filter_fn=lambda module, name: seen.append(name) or True)
        assert seen == ["0", "1.0"]
        assert isinstance(model[0], SparseConv2d) and model[0] is model[2] and model[1] is model[3]
        assert model[0]._zeroskip_name == "0"
        torch.testing.assert_close(model(x), expected)
        zeroskip.densify_(model)
        assert type(model[0]) is nn.Conv2d and model[0] is model[2] and type(model[1][0]) is nn.Conv2d
        torch.testing.assert_close(model(x), expected)


def test_sparsify_again_changes_mode():
    model = zeroskip.sparsify_(_model(), mode="rows")
    first = model[0]
    zeroskip.sparsify_(model, mode="dense")
    assert model[0] is first and first.mode == "dense"


def test_sparsify_bare_conv_returns_converted_module():
    conv = nn.Conv2d(3, 4, 3)
    sparse = zeroskip.sparsify_(conv)
    assert isinstance(sparse, SparseConv2d) and sparse.weight is conv.weight
    dense = zeroskip.densify_(sparse)
    assert type(dense) is nn.Conv2d and dense.weight is conv.weight


@pytest.mark.parametrize(
    "call",
    [
        lambda: zeroskip.sparsify_(_model(), mode="fast"),
        lambda: zeroskip.sparsify_(_model(), filter_fn="conv"),
        lambda: zeroskip.sparsify_("model"),
        lambda: zeroskip.densify_(3),
    ],
    ids=["mode", "filter_fn", "model", "densify_model"],
)
def test_conversion_bad_arguments(call):
    with pytest.raises((TypeError, ValueError)):
        call()


def test_densify_round_trip(pattern):
    model = _model()
    parameters = {name: p for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = pattern("mixed_batch", (5, 3, 18, 18))
    with torch.no_grad():
        expected = model(x)
        zeroskip.sparsify_(model)
        assert zeroskip.densify_(model) is model
        assert _names_of(model, SparseConv2d) == []
        assert _names_of(model, nn.Conv2d) == ["0", "2.0", "2.2"]
        assert not any(hasattr(m, "mode") or hasattr(m, "_zeroskip_name") for m in model.modules())
        assert all(p is parameters[name] for name, p in model.named_parameters())
        assert list(model.state_dict()) == list(state)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        torch.testing.assert_close(model(x), expected)


def test_forward_hooks_survive_conversion(pattern):
    model = _model()
    calls = []
    model[0].register_forward_hook(lambda module, args, output: calls.append(type(module)))
    x = pattern("blobs", (1, 3, 12, 12))
    with torch.no_grad():
        zeroskip.sparsify_(model)(x)
        zeroskip.densify_(model)(x)
    assert calls == [SparseConv2d, nn.Conv2d]


def test_sparsified_model_copies_pickles_and_casts(pattern):
    model = zeroskip.sparsify_(_model(), mode="tiles")
    x = pattern("blobs", (2, 3, 16, 16))
    with torch.no_grad():
        expected = model(x)
        clone = copy.deepcopy(model)
        torch.testing.assert_close(clone(x), expected)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert isinstance(loaded[0], SparseConv2d)
        torch.testing.assert_close(loaded(x), expected)
        reference = zeroskip.densify_(copy.deepcopy(model)).double()
        torch.testing.assert_close(model.double()(x.double()), reference(x.double()))


class _Everything(nn.Module):
    """A small network through every kind of layer the whole-network carry follows (pointwise, in place,
    batch norm, pools with padding and ceil_mode, nearest upsampling, concatenation, residual add, gating,
    dropout) and some it stops at (reflect padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding="same", dilation=2)
        self.c3 = nn.Conv2d(16, 8, 1)
        self.c4 = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.c5 = nn.Conv2d(8, 4, 5, stride=2, padding=2, padding_mode="reflect")
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu_(self.bn(self.c1(x)))
        skip = y
        y = nn.functional.max_pool2d(y, 3, 2, 1)
        y = nn.functional.leaky_relu(self.c2(y), 0.1)
        y = nn.functional.avg_pool2d(y, 2, ceil_mode=True)
        y = nn.functional.interpolate(y, size=skip.shape[2:], mode="nearest")
        y = self.c3(self.drop(torch.cat([y, skip], 1)))
        y = y * torch.sigmoid(y) + 0.5 - y / 3
        y = torch.clamp(y, -1, 1) + skip
        y = nn.functional.hardswish(self.c4(y))
        y = nn.functional.adaptive_avg_pool2d(y, (y.shape[2] // 2, y.shape[3] // 2))
        return self.c5(nn.functional.gelu(y)).tanh()


def _randomize_batch_norms(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters away from the identity, as in a trained network: the
    inactive region then holds per-channel constants, not zeros."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor, low, high in ((module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0),
                                      (module.weight, 0.5, 1.5), (module.bias, -0.5, 0.5)):
                with torch.no_grad():
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model


def _zoo(name: str) -> nn.Module:
    if name == "everything":
        torch.manual_seed(0)
        return _randomize_batch_norms(_Everything()).eval()
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    return _randomize_batch_norms(getattr(models, name)(weights=None)).eval()


ZOO = ["resnet18", "squeezenet1_1", "everything", pytest.param("mobilenet_v2", marks=pytest.mark.slow)]


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("mode", ["auto", "tiles", pytest.param("rows", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ZOO)
def test_models_same_output_after_sparsify(name, mode, context, each_pattern):
    """Whole networks, sparsified (sparse convolutions and the activity carried between them), against
    the same network dense: same outputs, plain tensors, state_dict keys unchanged, densify_ undoes it."""
    model = _zoo(name)
    keys = list(model.state_dict())
    convs = _names_of(model, nn.Conv2d)
    inputs = list(each_pattern((5, 3, 64, 80), mode="auto"))
    with context():
        expected = [model(x) for _, x in inputs]
        zeroskip.sparsify_(model, mode=mode)
        assert _names_of(model, SparseConv2d) == convs and list(model.state_dict()) == keys
        for (pattern_name, x), reference in zip(inputs, expected):
            out = model(x)
            assert type(out) is torch.Tensor
            torch.testing.assert_close(out, reference, msg=lambda m, p=pattern_name: f"{name} on {p}: {m}")
        zeroskip.densify_(model)
        assert _names_of(model, nn.Conv2d) == convs
        torch.testing.assert_close(model(inputs[-1][1]), expected[-1])


def test_resnet18_records_every_convolution(pattern):
    model = zeroskip.sparsify_(_zoo("resnet18"), mode="tiles")
    with torch.no_grad(), zeroskip.profile() as prof:
        model(pattern("blobs", (2, 3, 64, 80)))
    assert [record.name for record in prof.records] == _names_of(model, SparseConv2d)
    assert len(prof.records) == 20


@pytest.mark.parametrize("mode", ["auto", "tiles"])
def test_resnet18_on_masked_vtest(mode, vtest_frames):
    model = _zoo("resnet18")
    frames = vtest_frames[:2, :, 100:292, 200:456]
    with torch.no_grad():
        expected = model(frames)
        torch.testing.assert_close(zeroskip.sparsify_(model, mode=mode)(frames), expected)


class _ModifiesActivation(nn.Module):
    """Writes into part of an intermediate activation between two convolutions, the way detection heads
    write decoded boxes into slices of a feature map."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        if self.how == "setitem":
            y[:, :, :4] = 1.0
        elif self.how == "view_in_place":
            y[:, :, :4].fill_(1.0)
        elif self.how == "view_out":
            torch.add(y[:, :, :4], 1.0, out=y[:, :, :4])
        elif self.how == "data":
            y.data[:, :, :4] = 1.0
        elif self.how == "numpy":
            y.numpy()[:, :, :4] = 1.0
        return self.c2(y)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("how", ["setitem", "view_in_place", "view_out", "data", "numpy"])
def test_writes_into_activations_are_seen(how, context, pattern):
    torch.manual_seed(0)
    model = _ModifiesActivation(how).eval()
    x = pattern("blobs", (2, 3, 64, 64))
    with context():
        expected = model(x)
        torch.testing.assert_close(zeroskip.sparsify_(model, mode="tiles")(x), expected)


def test_sparsified_model_trains(pattern):
    """With autograd recording, gradients match the dense model's."""
    dense = _model().train()
    sparse = zeroskip.sparsify_(copy.deepcopy(dense))
    x = pattern("blobs", (2, 3, 12, 12))
    for model in (dense, sparse):
        model(x).square().sum().backward()
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=lambda m, name=name: f"{name}: {m}")
