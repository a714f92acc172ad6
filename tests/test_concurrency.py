"""Concurrency: eight threads share one ``SparseConv2d`` and one sparsified model, each with its own inputs;
every answer is the dense one, and every cache zeroskip keeps stays bounded and consistent."""

from __future__ import annotations

import copy
import gc
import importlib
import pkgutil
import threading

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TOLERANCES, make_pattern, make_weights

import zeroskip
import zeroskip.activation
import zeroskip.conv
import zeroskip.network

THREADS = 8
CONV_CALLS = 40  # per thread, on the shared module
MODEL_CALLS = 3  # per thread, on the shared model
PATTERN_CYCLE = ("blobs", "pixel_bottom_right", "mixed_batch", "zeros", "row_band", "dense", "scatter")


def _in_threads(work) -> None:
    """Run ``work(thread_index)`` in :data:`THREADS` threads started together; re-raise the first failure."""
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            with torch.no_grad():
                work(index)
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _input(thread: int, call: int) -> torch.Tensor:
    """A different input per thread and call: pattern, size and memory format all vary."""
    shape = (1 + call % 3, 3, 20 + 3 * thread + call % 5, 24 + 2 * call % 17)
    x = make_pattern(PATTERN_CYCLE[(thread + call) % len(PATTERN_CYCLE)], shape, seed=thread * 1000 + call)
    return x.contiguous(memory_format=torch.channels_last) if call % 4 == 3 else x


@pytest.mark.parametrize("mode", ["auto", "tiles", "rows"])
def test_threads_share_one_sparse_conv(mode):
    torch.manual_seed(0)
    conv = zeroskip.SparseConv2d(3, 8, 5, stride=2, padding=2, mode=mode, tile_size=(3, 4))
    answers: list[tuple] = []

    def work(thread: int) -> None:
        for call in range(CONV_CALLS):
            x = _input(thread, call)
            out = conv(x)
            expected = F.conv2d(x, conv.weight, conv.bias, 2, 2)
            torch.testing.assert_close(out, expected, **TOLERANCES[torch.float32],
                                       msg=lambda m, t=thread, c=call: f"thread {t} call {c}: {m}")
            answers.append((thread, call))

    with zeroskip.profile() as prof:
        _in_threads(work)
    assert len(answers) == THREADS * CONV_CALLS
    assert len(prof.records) == THREADS * CONV_CALLS, "a profile records the calls of every thread"
    if mode != "auto":
        assert {r.chosen for r in prof.records} > {"fill"}, "the sparse paths ran"


def _resnet18() -> nn.Module:
    models = pytest.importorskip("torchvision.models")
    from zeroskip.models import randomize_batchnorm_

    torch.manual_seed(0)
    return randomize_batchnorm_(models.resnet18(weights=None), torch.Generator().manual_seed(0)).eval()


def test_threads_share_one_sparsified_model():
    dense = _resnet18()
    inputs = [[make_pattern(PATTERN_CYCLE[(t + c) % 4], (2, 3, 64, 64 + 16 * (t % 3)), seed=10 * t + c)
               for c in range(MODEL_CALLS)] for t in range(THREADS)]
    with torch.no_grad():
        expected = [[dense(x) for x in row] for row in inputs]
    # tiles: at test resolution auto finds every layer too cheap to skip.
    model = zeroskip.sparsify_(copy.deepcopy(dense), mode="tiles")

    def work(thread: int) -> None:
        for call, x in enumerate(inputs[thread]):
            out = model(x)
            assert type(out) is torch.Tensor
            torch.testing.assert_close(out, expected[thread][call],
                                       msg=lambda m, t=thread, c=call: f"thread {t} call {c}: {m}")

    with zeroskip.profile() as prof:
        _in_threads(work)
    assert len(prof.records) == THREADS * MODEL_CALLS * 20
    assert {r.chosen for r in prof.records} - {"dense"}, "some convolution skipped work"


def _module_containers() -> dict[str, int]:
    """Size of every module-level dict, list and set and of every ``lru_cache`` in zeroskip."""
    sizes = {}
    for info in pkgutil.walk_packages(zeroskip.__path__, "zeroskip."):
        if info.name.endswith("__main__"):
            continue  # running it is what importing it does
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, (dict, list, set)) and not name.startswith("__"):
                sizes[f"{info.name[len('zeroskip.'):]}.{name}"] = len(value)
            elif hasattr(value, "cache_info"):
                sizes[f"{info.name[len('zeroskip.'):]}.{name}"] = value.cache_info().currsize
    return sizes


# The caches zeroskip keeps at module level, each with its bound (checked below after a workload that
# would exceed it). Any other module-level container that grows with the calls is an unbounded cache.
BOUNDED_CACHES = {
    "engine.output._OUTPUT_FORMATS": zeroskip.engine.output._OUTPUT_FORMATS_MAX,
    # One cache, seen from the module that defines it and the package that imports it.
    "engine.cost.image_costs": zeroskip.engine.cost.image_costs.cache_parameters()["maxsize"],
    "engine.image_costs": zeroskip.engine.cost.image_costs.cache_parameters()["maxsize"],
    "activation._in_place": zeroskip.activation._in_place.cache_parameters()["maxsize"],
}


def test_module_level_caches_are_bounded_under_threads():
    """Eight threads with more distinct call signatures than any cache holds: only the known caches grow,
    and none past its bound."""
    before = _module_containers()
    weight, bias = make_weights(4, 2, (3, 3))

    def work(thread: int) -> None:
        for call in range(50):
            x = make_pattern("blobs", (1, 2, 8 + call, 8 + thread), seed=call)
            out = zeroskip.conv2d(x, weight, bias, padding=1, mode="tiles")
            torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1))

    _in_threads(work)
    after = _module_containers()
    grown = {name for name in after if after[name] > before.get(name, 0)}
    assert grown <= set(BOUNDED_CACHES), f"unbounded module-level containers grew: {grown - set(BOUNDED_CACHES)}"
    for name, bound in BOUNDED_CACHES.items():
        assert bound is not None and after[name] <= bound, (name, after[name], bound)
    assert THREADS * 50 > zeroskip.engine.output._OUTPUT_FORMATS_MAX, "the workload must overflow the cache"


def test_background_cache_holds_only_live_weights():
    """The whole-network background cache keeps one entry per live convolution weight: models built,
    run in threads and dropped leave nothing behind."""
    cache = zeroskip.network.BACKGROUNDS
    gc.collect()
    baseline = len(cache._entries)

    def work(thread: int) -> None:
        torch.manual_seed(thread)
        dense = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                              nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 2, 1)).eval()
        with torch.no_grad():
            dense[1].running_mean.uniform_(-1, 1)
        x = make_pattern("blobs", (2, 3, 40, 48), seed=thread)
        expected = dense(x)
        model = zeroskip.sparsify_(copy.deepcopy(dense), mode="tiles")
        for _ in range(3):
            torch.testing.assert_close(model(x), expected)

    _in_threads(work)
    gc.collect()
    assert len(cache._entries) == baseline


def test_finite_weight_cache_sees_a_change_made_by_another_thread():
    """One thread makes a weight non-finite between calls of the others: later calls see it (dense NaN)."""
    torch.manual_seed(0)
    conv = zeroskip.SparseConv2d(3, 4, 3, padding=1, mode="tiles")
    x = make_pattern("pixel_center", (1, 3, 24, 24))
    changed = threading.Event()
    seen: list[bool] = []

    def work(thread: int) -> None:
        if thread == 0:
            conv.weight[0, 0, 0, 0] = float("inf")
            changed.set()
            return
        changed.wait()
        seen.append(bool(conv(x).isnan().any()))

    _in_threads(work)
    assert seen == [True] * (THREADS - 1)


def test_sparsify_in_one_thread_leaves_other_threads_models_alone():
    """sparsify_ traces the model with torch.fx, which swaps nn.Module's call for every thread while
    it runs: models running in other threads meanwhile (and other sparsify_ calls) are unaffected."""
    from zeroskip.models import build_model

    template = build_model("resnet18")

    def work(thread: int) -> None:
        torch.manual_seed(thread)
        if thread % 2:
            for _ in range(10):
                zeroskip.sparsify_(copy.deepcopy(template))
            return
        dense = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
        x = torch.randn(1, 3, 8, 8)
        expected = dense(x)
        for _ in range(2000):
            torch.testing.assert_close(dense(x), expected)

    _in_threads(work)
    assert torch.nn.Module.__call__ is torch.nn.Module._wrapped_call_impl
