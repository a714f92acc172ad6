"""The BatchNorm (and ReLU) folded into a sparse convolution's writes: found only where nothing
else reads the convolution's output, applied only while that still holds, and exact."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import eager_costs, make_pattern

import zeroskip
from zeroskip.models import build_model, randomize_batchnorm_

C = 8


class Block(nn.Module):
    """conv -> bn -> relu (in the given form) -> conv -> bn, plus the input (a residual)."""

    def __init__(self, relu: str = "module") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(C, C, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(C)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(C, C, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(C)
        self.form = relu

    def forward(self, x):
        y = self.bn1(self.conv1(x))
        y = {
            "module": lambda t: self.relu(t),
            "function": F.relu,
            "function_inplace": lambda t: F.relu(t, inplace=True),
            "torch": torch.relu,
            "method": lambda t: t.relu(),
            "method_inplace": lambda t: t.relu_(),
        }[self.form](y)
        return self.bn2(self.conv2(y)) + x


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.bn = nn.BatchNorm2d(C)
        self.relu = nn.ReLU()
        self.block = block
        self.head = nn.Conv2d(C, 4, 1)

    def forward(self, x):
        return self.head(self.block(self.relu(self.bn(self.stem(x)))))


def _ready(model: nn.Module) -> nn.Module:
    randomize_batchnorm_(model, torch.Generator().manual_seed(0))
    return model.eval()


def _folded(model: nn.Module) -> dict[str, str | None]:
    return {
        name: (module._zeroskip_epilogue.describe() if "_zeroskip_epilogue" in module.__dict__ else None)
        for name, module in model.named_modules()
        if isinstance(module, zeroskip.SparseConv2d)
    }


def _run(dense: nn.Module, x: torch.Tensor, sparse: nn.Module | None = None, *, eager: bool = False):
    """The sparsified model's output (checked against ``dense``'s) and the plan details of its calls."""
    sparse = sparse if sparse is not None else zeroskip.sparsify_(copy.deepcopy(dense))
    with torch.no_grad(), zeroskip.profile() as prof:
        expected = dense(x)
        if eager:
            for module in sparse.modules():
                if isinstance(module, zeroskip.SparseConv2d):
                    module.tile_size = (4, 5)
        with eager_costs() if eager else torch.no_grad():
            actual = sparse(x)
    torch.testing.assert_close(actual, expected, atol=1e-5 * max(float(expected.abs().max()), 1.0), rtol=1.3e-6)
    return actual, [record.detail for record in prof.records]


def test_resnet18_folds_every_conv_bn_pair():
    folded = _folded(zeroskip.sparsify_(build_model("resnet18")))
    assert folded["conv1"] == "+bn+relu"
    assert folded["layer1.0.conv1"] == "+bn+relu"
    # The second BatchNorm of a block feeds the residual sum, not a ReLU.
    assert folded["layer1.0.conv2"] == "+bn"
    assert folded["layer2.0.downsample.0"] == "+bn"
    assert None not in folded.values()


@pytest.mark.parametrize("form", ["module", "function", "function_inplace", "torch", "method", "method_inplace"])
@pytest.mark.parametrize("name", ["pixel_center", "pixel_top_left", "mixed_batch", "zeros", "blobs"])
@pytest.mark.parametrize("eager", [False, True], ids=["auto", "eager"])
def test_folded_network_matches_dense(form, name, eager):
    torch.manual_seed(0)
    dense = _ready(Net(Block(form)))
    assert _folded(zeroskip.sparsify_(copy.deepcopy(dense))) == {
        "stem": "+bn+relu", "block.conv1": "+bn+relu", "block.conv2": "+bn", "head": None
    }
    _, details = _run(dense, make_pattern(name, (2, 3, 24, 20)), eager=eager)
    if eager:
        assert any("+bn+relu" in d for d in details)


def test_folded_values_equal_the_unfolded_ones_bit_for_bit(vtest_frames):
    dense = _ready(Net(Block()))
    folded = zeroskip.sparsify_(copy.deepcopy(dense))
    unfolded = zeroskip.sparsify_(copy.deepcopy(dense))
    for module in unfolded.modules():
        module.__dict__.pop("_zeroskip_epilogue", None)
    x = F.interpolate(vtest_frames[:2], size=(72, 96), mode="nearest")
    with torch.no_grad():
        assert torch.equal(folded(x), unfolded(x))


def test_batch_norm_without_affine_or_with_other_eps():
    dense = Net(Block())
    dense.bn = nn.BatchNorm2d(C, affine=False, eps=1e-3)
    dense.block.bn1 = nn.BatchNorm2d(C, eps=0.1)
    _run(_ready(dense), make_pattern("pixel_center", (1, 3, 24, 20)))


@pytest.mark.parametrize("case", ["output_read_twice", "bn_output_read_twice", "shared_conv"])
def test_not_folded_where_something_else_reads_the_output(case):
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, C, 3, padding=1)
            self.bn = nn.BatchNorm2d(C)
            self.other = nn.BatchNorm2d(C)

        def forward(self, x):
            y = self.conv(x)
            if case == "output_read_twice":
                return F.relu(self.bn(y)) + y
            if case == "bn_output_read_twice":
                z = self.bn(y)
                return F.relu(z) * z
            return F.relu(self.bn(y)) + self.other(self.conv(x))

    dense = _ready(Twice())
    folded = _folded(zeroskip.sparsify_(copy.deepcopy(dense)))
    assert folded["conv"] == ("+bn" if case == "bn_output_read_twice" else None)
    _run(dense, make_pattern("pixel_center", (1, 3, 24, 20)))


def test_untraceable_model_folds_in_the_children_that_trace():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net(Block())

        def forward(self, x):
            return self.net(x) if bool(x.sum() >= 0) else -self.net(x)

    dense = _ready(DataDependent())
    assert _folded(zeroskip.sparsify_(copy.deepcopy(dense)))["net.block.conv1"] == "+bn+relu"
    _run(dense, make_pattern("pixel_center", (1, 3, 24, 20)))


def test_tracing_runs_no_forward_of_a_module_without_convolutions():
    class Counter(nn.Module):
        calls = 0

        def forward(self, x):
            Counter.calls += 1
            return x

    zeroskip.sparsify_(nn.Sequential(nn.Conv2d(3, C, 3), nn.BatchNorm2d(C), Counter()).eval())
    assert Counter.calls == 0


def _hook_conv(model):
    seen = []
    model.block.conv1.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    return seen


@pytest.mark.parametrize(
    "change",
    ["none", "train", "conv_hook", "bn_pre_hook", "relu_pre_hook", "replaced_bn", "replaced_relu", "global_hook",
     "float64"],
)
def test_folding_stops_where_it_no_longer_holds(change):
    dense = _ready(Net(Block()))
    sparse = zeroskip.sparsify_(copy.deepcopy(dense))
    x = make_pattern("pixel_center", (2, 3, 24, 20))
    handles = []
    if change == "train":
        # Batch statistics: every pixel counts, nothing can be folded (or skipped).
        dense.block.bn1.train()
        sparse.block.bn1.train()
    elif change == "conv_hook":
        seen = _hook_conv(sparse)
    elif change == "bn_pre_hook":
        sparse.block.bn1.register_forward_pre_hook(lambda m, a: None)
    elif change == "relu_pre_hook":
        sparse.block.relu.register_forward_pre_hook(lambda m, a: None)
    elif change in ("replaced_bn", "replaced_relu"):
        attribute, replacement = ("bn1", nn.Identity()) if change == "replaced_bn" else ("relu", nn.Tanh())
        for model in (dense, sparse):
            setattr(model.block, attribute, copy.deepcopy(replacement))
    elif change == "global_hook":
        handles.append(nn.modules.module.register_module_forward_hook(lambda m, a, out: None))
    elif change == "float64":
        dense.double()
        sparse.double()
        x = x.double()
    try:
        _, details = _run(dense, x, sparse, eager=True)
    finally:
        for handle in handles:
            handle.remove()
    # The block's first convolution: the second call (float64: folded by the torch executor).
    assert ("+bn+relu" in details[1]) == (change in ("none", "float64")), details
    if change == "conv_hook":
        with torch.no_grad():
            torch.testing.assert_close(seen[0], dense.block.conv1(dense.relu(dense.bn(dense.stem(x)))))


@pytest.mark.parametrize("change", ["in_place", "data, then sparsify_ again"])
def test_folded_coefficients_follow_batch_norm_changes(change):
    """The folded scale and shift are kept while the BatchNorm's tensors keep their versions; a write
    through ``.data`` bumps none, and calling sparsify_ again folds anew."""
    dense = _ready(Net(Block()))
    sparse = zeroskip.sparsify_(copy.deepcopy(dense))
    x = make_pattern("pixel_center", (2, 3, 24, 20))
    _run(dense, x, sparse, eager=True)
    with torch.no_grad():
        for model in (dense, sparse):
            if change == "in_place":
                model.block.bn1.running_mean.add_(0.75)
            else:
                model.block.bn1.running_mean.data.add_(0.75)
    if change != "in_place":
        zeroskip.sparsify_(sparse)
    _, details = _run(dense, x, sparse, eager=True)
    assert "+bn+relu" in details[1], details


def test_densify_drops_the_epilogues_and_copies_keep_them():
    dense = _ready(Net(Block()))
    sparse = zeroskip.sparsify_(copy.deepcopy(dense))
    twin = copy.deepcopy(sparse)
    epilogue = twin.block.conv1._zeroskip_epilogue
    assert epilogue.batch_norm is twin.block.bn1 and epilogue.relu is twin.block.relu
    buffer = io.BytesIO()
    torch.save(sparse, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.block.conv1._zeroskip_epilogue.batch_norm is loaded.block.bn1
    x = make_pattern("pixel_center", (1, 3, 24, 20))
    for model in (twin, loaded):
        _, details = _run(dense, x, model, eager=True)
        assert "+bn+relu" in details[1]
    pickle.dumps(sparse)
    zeroskip.densify_(sparse)
    assert not any("_zeroskip_epilogue" in m.__dict__ for m in sparse.modules())
