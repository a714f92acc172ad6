"""Interoperability with the rest of PyTorch: grad modes, autograd, torch.compile, TorchScript and export,
state_dict, copying and pickling, dtype casts."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import make_pattern

import zeroskip
from zeroskip import SparseConv2d


class _Net(nn.Module):
    """A small network with the usual layers between convolutions: batch norm, ReLU, pooling, a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm2d(8)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(torch.relu(self.bn(self.stem(x))), 3, 2, 1)
        return self.head(torch.relu(y + self.body(y)))


def _pair() -> tuple[nn.Module, nn.Module]:
    """The same network dense and sparsified (mode="tiles", so that small test images skip work)."""
    torch.manual_seed(0)
    dense = _Net().eval()
    with torch.no_grad():
        dense.bn.running_mean.uniform_(-0.5, 0.5)
        dense.bn.running_var.uniform_(0.5, 2.0)
    return dense, zeroskip.sparsify_(copy.deepcopy(dense), mode="tiles")


INPUTS = {name: make_pattern(name, (3, 3, 48, 64), seed=4) for name in ("blobs", "pixel_top_left", "mixed_batch")}


def _assert_same_outputs(model: nn.Module, reference: nn.Module, dtype: torch.dtype = torch.float32) -> None:
    for name, x in INPUTS.items():
        x = x.to(dtype)
        expected = reference(x)
        out = model(x)
        assert type(out) is torch.Tensor and out.dtype == dtype, (type(out), out.dtype)
        torch.testing.assert_close(out, expected, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode, torch.enable_grad],
                         ids=["no_grad", "inference_mode", "enable_grad"])
def test_grad_modes(context):
    """Under every grad mode the sparsified network gives the dense outputs; with grad enabled and
    parameters requiring grad, its outputs are part of the graph as the dense ones are."""
    dense, sparse = _pair()
    with context():
        _assert_same_outputs(sparse, dense)
        out = sparse(INPUTS["blobs"])
    assert out.requires_grad == (context is torch.enable_grad)
    assert out.is_inference() == (context is torch.inference_mode)


def test_sparse_path_runs_under_no_grad_and_inference_mode():
    _, sparse = _pair()
    for context in (torch.no_grad, torch.inference_mode):
        with context(), zeroskip.profile() as prof:
            sparse(INPUTS["blobs"])
        assert {r.chosen for r in prof.records} - {"dense"}, [r.chosen for r in prof.records]


@pytest.mark.parametrize("wrt", ["input", "parameters", "both"])
def test_autograd_through_sparsified_model_gives_dense_gradients(wrt):
    dense, sparse = _pair()
    for model in (dense, sparse):
        model.requires_grad_(wrt != "input")
    grads = []
    for model in (dense, sparse):
        x = INPUTS["mixed_batch"].clone().requires_grad_(wrt != "parameters")
        out = model(x)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        grads.append([x.grad] + [p.grad for p in model.parameters()])
    for index, (expected, actual) in enumerate(zip(*grads)):
        if expected is None:
            assert actual is None
        else:
            torch.testing.assert_close(actual, expected, msg=lambda m, i=index: f"gradient {i}: {m}")


def _compiler_available() -> str:
    """``""`` when torch.compile's default backend works here, else why not."""
    try:
        torch.compile(lambda t: t * 2 + 1)(torch.ones(3))
    except Exception as error:  # any toolchain failure (no C++ compiler, no Triton, ...) means skip
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return ""


def _small_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2)).eval()
    return dense, zeroskip.sparsify_(copy.deepcopy(dense), mode="tiles")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("pair", [_small_pair, pytest.param(_pair, marks=pytest.mark.slow)], ids=["small", "net"])
def test_torch_compile_runs_and_matches(pair):
    """Each sparse convolution is a graph break and runs eagerly; the rest compiles."""
    reason = _compiler_available()
    if reason:
        pytest.skip(f"torch.compile unavailable here: {reason}")
    dense, sparse = pair()
    compiled = torch.compile(sparse)
    with torch.no_grad():
        _assert_same_outputs(compiled, dense)
        with zeroskip.profile() as prof:
            compiled(INPUTS["blobs"])
    assert {r.chosen for r in prof.records} - {"dense"}, "no convolution skipped anything under torch.compile"


def _script(model):
    return torch.jit.script(model)


def _trace(model):
    return torch.jit.trace(model, INPUTS["blobs"])


def _export(model, strict=False):
    return torch.export.export(model, (INPUTS["blobs"],), strict=strict)


CAPTURES = {
    "jit_script": _script,
    "jit_trace": _trace,
    "export": _export,
    "export_strict": lambda model: _export(model, strict=True),
}


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore:Converting a tensor")
@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("what", ["module", "model"])
def test_graph_capture_fails_clearly_and_works_after_densify(what, capture):
    """A captured graph would replay one input's plan on every input: capture refuses, naming densify_."""
    dense, sparse = _pair()
    if what == "module":
        dense, sparse = dense.stem, SparseConv2d.from_dense(dense.stem)
    with pytest.raises(Exception, match=r"densify_") as raised:
        CAPTURES[capture](sparse)
    assert "SparseConv2d" in str(raised.value)
    if capture == "export_strict":
        return  # strict export reports the graph break; densified, it is the dense model's export
    captured = CAPTURES[capture](zeroskip.densify_(sparse))
    run = captured.module() if capture.startswith("export") else captured
    with torch.no_grad():
        _assert_same_outputs(run, dense)


def test_state_dict_round_trips_between_dense_and_sparsified_models():
    dense, sparse = _pair()
    assert list(sparse.state_dict()) == list(dense.state_dict())
    torch.manual_seed(5)
    other = _Net().eval()
    sparse.load_state_dict(other.state_dict(), strict=True)
    back = _Net().eval()
    back.load_state_dict(sparse.state_dict(), strict=True)
    with torch.no_grad():
        _assert_same_outputs(sparse, other)
        _assert_same_outputs(back, other)


def test_deepcopy_and_pickle_after_use_are_independent():
    """Copies made after calls (caches filled) compute the same, and changing a copy leaves the original alone."""
    dense, sparse = _pair()
    with torch.no_grad():
        _assert_same_outputs(sparse, dense)
        copies = [copy.deepcopy(sparse), pickle.loads(pickle.dumps(sparse))]
        for clone in copies:
            assert isinstance(clone.head, SparseConv2d) and clone.head.weight is not sparse.head.weight
            _assert_same_outputs(clone, dense)
            clone.head.weight.mul_(2)
            clone.stem.weight.mul_(-1)
        _assert_same_outputs(sparse, dense)
        reference = copy.deepcopy(dense)
        reference.head.weight.mul_(2)
        reference.stem.weight.mul_(-1)
        _assert_same_outputs(copies[1], reference)


CASTS = {
    "double": (lambda m: m.double(), torch.float64),
    "to_float64": (lambda m: m.to(torch.float64), torch.float64),
    "bfloat16": (lambda m: m.bfloat16(), torch.bfloat16),
    "half": (lambda m: m.half(), torch.float16),
    "to_float64_and_back": (lambda m: m.to(dtype=torch.float64).float(), torch.float32),
}


@pytest.mark.parametrize("cast", CASTS)
def test_dtype_casts_after_use(cast):
    """A cast after calls replaces every parameter: results follow the new dtype exactly as the dense model's do."""
    function, dtype = CASTS[cast]
    dense, sparse = _pair()
    with torch.no_grad():
        sparse(INPUTS["blobs"])
        function(dense), function(sparse)
        assert all(p.dtype == dtype for p in sparse.parameters())
        _assert_same_outputs(sparse, dense, dtype)
