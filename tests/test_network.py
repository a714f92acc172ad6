"""Whole networks from the model zoo: the sparsified model's output equals the dense model's."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import make_pattern
from test_activation import assert_network_matches

import zeroskip
from zeroskip.activation import SparseActivation
from zeroskip.models import build_model

pytest.importorskip("torchvision")

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "fcn_resnet50")


@functools.cache
def _model(name: str) -> torch.nn.Module:
    model = build_model(name)
    if name == "fcn_resnet50":
        # The dict output of the segmentation model, as one tensor for the comparisons.
        return _Out(model)
    return model


class _Out(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def _small_frames(frames: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
    """Masked frames at a test-friendly size: downscaled (nearest) and two corner crops."""
    return [
        F.interpolate(frames[:1], size=size, mode="nearest"),
        frames[1:2, :, : size[0], : size[1]],
        frames[2:3, :, -size[0] :, -size[1] :],
    ]


@pytest.mark.parametrize("eager", [False, True], ids=["auto", "eager"])
@pytest.mark.parametrize("name", MODELS)
def test_masked_vtest_small(name, eager, vtest_frames):
    size = (64, 96) if name == "fcn_resnet50" else (96, 128)
    for x in _small_frames(vtest_frames, size):
        assert_network_matches(_model(name), x, eager=eager, tile_size=(4, 8))


@pytest.mark.parametrize("name", MODELS)
def test_random_sparse_inputs(name):
    for index, pattern in enumerate(("pixel_top_left", "blobs", "mixed_batch")):
        x = make_pattern(pattern, (5 if pattern == "mixed_batch" else 1, 3, 64, 80), seed=index)
        assert_network_matches(_model(name), x, eager=True, tile_size=(4, 8))


def test_batch_of_masked_frames_at_full_resolution(vtest_frames):
    assert_network_matches(_model("resnet18"), vtest_frames)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_masked_vtest_full_resolution(name, vtest_frames):
    frames = vtest_frames[:1] if name == "fcn_resnet50" else vtest_frames
    assert_network_matches(_model(name), frames)


def test_profile_has_per_layer_active_fractions(vtest_frames):
    model = zeroskip.sparsify_(copy.deepcopy(build_model("resnet18")))
    with torch.inference_mode(), zeroskip.profile() as prof:
        model(vtest_frames[:1])
    names = [record.name for record in prof.records]
    convolutions = [name for name, module in model.named_modules() if isinstance(module, zeroskip.SparseConv2d)]
    assert names == convolutions
    fractions = {record.name: record.active_fraction for record in prof.records}
    assert all(0.0 <= f <= 1.0 for f in fractions.values())
    assert fractions["layer1.0.conv1"] < 0.5, "the first stage skips most of a masked frame"
    assert "layer1.0.conv1" in prof.summary()


def test_dense_input_runs_dense():
    model = zeroskip.sparsify_(copy.deepcopy(build_model("resnet18")))
    x = torch.rand(1, 3, 64, 64) + 0.1
    with torch.inference_mode(), zeroskip.profile() as prof:
        out = model(x)
    assert type(out) is torch.Tensor
    assert all(record.chosen == "dense" for record in prof.records)


def test_segmentation_output_dict_is_plain(vtest_frames):
    model = zeroskip.sparsify_(copy.deepcopy(_model("fcn_resnet50").model))
    with torch.inference_mode():
        out = model(F.interpolate(vtest_frames[:1], size=(64, 96), mode="nearest"))
    assert set(out) == {"out"}
    assert not isinstance(out["out"], SparseActivation)


def test_model_that_skips_nothing_stops_carrying():
    """Convolutions too small to skip leave nothing for the carry to save: after one carried
    forward that skipped nothing, inputs of that shape run as known dense (no per-layer checks),
    retried every so often."""
    from zeroskip import network

    model = zeroskip.sparsify_(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1)))
    reference = copy.deepcopy(model)
    zeroskip.densify_(reference)
    x = torch.zeros(1, 3, 32, 32)
    x[..., 4:9, 4:9] = 1.0
    waits, checked = [], []
    with torch.no_grad():
        for _ in range(network._RETRY_CARRY_EVERY + 2):
            with zeroskip.profile() as prof:
                torch.testing.assert_close(model(x), reference(x))
            waits.append(model.__dict__[network._MEMO_ATTRIBUTE][(1, 3, 32, 32)])
            checked.append("skipped nothing" not in prof.records[0].detail)
    # Carried on the first forward and again once the wait ran out.
    every = network._RETRY_CARRY_EVERY
    assert waits == [every, *range(every - 1, -1, -1), every]
    assert checked == [True] + [False] * every + [True]
    zeroskip.densify_(model)
    assert network._MEMO_ATTRIBUTE not in model.__dict__


def test_model_that_skips_keeps_carrying(vtest_frames):
    from zeroskip import network

    model = zeroskip.sparsify_(copy.deepcopy(_model("resnet18")))
    x = vtest_frames[:1]
    with torch.no_grad():
        model(x)
        model(x)
    assert not model.__dict__.get(network._MEMO_ATTRIBUTE)
