"""PyTorch's own sample inputs for conv2d (its OpInfo and ModuleInfo entries), dense and with sparse
variants of each, through every mode and with small forced tiles: the outputs equal ``F.conv2d``'s."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import zeroskip

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (pip install expecttest)")
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db  # noqa: E402

DTYPES = (torch.float32, torch.float64)
TILE_SIZES = (None, 1, (2, 3))


def _sparse(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` with about three quarters of its pixels zeroed in blocks, every channel alike."""
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(x.shape[-2] // 2 + 1, x.shape[-1] // 2 + 1, generator=generator) < 0.25
    keep = keep.repeat_interleave(2, 0).repeat_interleave(2, 1)[: x.shape[-2], : x.shape[-1]]
    return x * keep


def _op_samples(dtype: torch.dtype) -> list:
    (op,) = [op for op in op_db if op.name == "nn.functional.conv2d"]
    return list(op.sample_inputs("cpu", dtype))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tile_size", TILE_SIZES, ids=str)
@pytest.mark.parametrize("mode", zeroskip.MODES)
def test_opinfo_samples(mode, tile_size, dtype):
    samples = _op_samples(dtype)
    assert samples
    for index, sample in enumerate(samples):
        weight, *rest = sample.args
        bias = rest[0] if rest else sample.kwargs.get("bias")
        kwargs = {key: value for key, value in sample.kwargs.items() if key != "bias"}
        for x in (sample.input, _sparse(sample.input, index)):
            expected = F.conv2d(x, weight, bias, **kwargs)
            actual = zeroskip.conv2d(x, weight, bias, mode=mode, tile_size=tile_size, **kwargs)
            torch.testing.assert_close(actual, expected, msg=lambda m, i=index: f"sample {i}: {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", zeroskip.MODES)
def test_moduleinfo_samples(mode, dtype):
    (info,) = [info for info in module_db if info.module_cls is nn.Conv2d]
    inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False, training=False)
    assert inputs
    for index, module_input in enumerate(inputs):
        conv = nn.Conv2d(*module_input.constructor_input.args, **module_input.constructor_input.kwargs).to(dtype)
        sparse = zeroskip.SparseConv2d.from_dense(conv, mode=mode)
        for x in module_input.forward_input.args:
            for variant in (x, _sparse(x, index)):
                with torch.no_grad():
                    torch.testing.assert_close(sparse(variant), conv(variant))
