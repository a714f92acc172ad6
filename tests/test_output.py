"""Output allocation: huge-page advice on whole pages inside large outputs only."""

from __future__ import annotations

import mmap

import pytest
import torch

from zeroskip.engine import output as _alloc


def test_large_outputs_are_advised_within_their_own_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(_alloc, "_MADVISE", lambda start, length, advice: calls.append((start, length, advice)))
    shape = (2, 8, 512, 512)  # 16 MiB of float32
    out = _alloc.empty_strided(shape, (8 * 512 * 512, 512 * 512, 512, 1), torch.float32, torch.device("cpu"))
    assert out.shape == shape and out.stride() == (8 * 512 * 512, 512 * 512, 512, 1)
    ((start, length, advice),) = calls
    begin, size = out.untyped_storage().data_ptr(), out.untyped_storage().nbytes()
    assert advice == mmap.MADV_HUGEPAGE and start % _alloc._HUGE_PAGE == 0 and length % _alloc._HUGE_PAGE == 0
    assert begin <= start and start + length <= begin + size and length >= size - 2 * _alloc._HUGE_PAGE


@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (1, 4, 256, 256)])
def test_small_outputs_are_left_alone(monkeypatch, shape):
    calls = []
    monkeypatch.setattr(_alloc, "_MADVISE", lambda *args: calls.append(args))
    _alloc.empty_strided(shape, torch.empty(shape).stride(), torch.float32, torch.device("cpu"))
    assert not calls


def test_channels_last_and_disabled(monkeypatch):
    shape = (1, 64, 288, 384)
    strides = torch.empty(shape).contiguous(memory_format=torch.channels_last).stride()
    monkeypatch.setattr(_alloc, "_MADVISE", None)  # ZEROSKIP_HUGEPAGES=0, or no madvise here
    out = _alloc.empty_strided(shape, strides, torch.float32, torch.device("cpu"))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_real_advice_leaves_values_writable():
    out = _alloc.empty_strided((1, 64, 288, 384), (64 * 288 * 384, 288 * 384, 384, 1), torch.float32,
                               torch.device("cpu"))
    out.fill_(1.5)
    assert float(out.sum()) == 1.5 * out.numel()
