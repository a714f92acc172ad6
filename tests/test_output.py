"""Output allocation: huge-page advice on whole pages inside large outputs only."""

from __future__ import annotations

import mmap

import pytest
import torch

from zeroskip._geometry import check_conv_args
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


def _large_geometry():
    x = torch.zeros(2, 3, 576, 768)  # a 2 x 64 x 288 x 384 float32 output: 54 MiB
    weight = torch.zeros(64, 3, 7, 7)
    return x, weight, check_conv_args(x, weight, None, 2, 3, 1, 1)


def test_large_native_outputs_read_zero_in_their_whole_pages(monkeypatch):
    x, weight, g = _large_geometry()
    # Whether fresh or recycled (full of ones, if the allocator hands this memory back): the pages
    # given back read as zeros.
    torch.ones(2, 64, 288, 384)
    monkeypatch.setattr(_alloc, "_fresh", lambda start, end: True)
    out, (start, end) = _alloc.new_output(x, weight, g, zeroed=True)
    begin, size = out.untyped_storage().data_ptr(), out.untyped_storage().nbytes()
    assert start % mmap.PAGESIZE == 0 and end % mmap.PAGESIZE == 0
    assert begin <= start < end <= begin + size and end - start >= size - 2 * mmap.PAGESIZE
    inside = out.flatten()[(start - begin) // 4 : (end - begin) // 4]
    assert inside.numel() and not inside.any()
    assert out.untyped_storage().resizable()


def test_recycled_or_small_outputs_are_not_zeroed(monkeypatch):
    x, weight, g = _large_geometry()
    assert _alloc.new_output(x, weight, g)[1] == (0, 0)  # not the native executor's
    small = x[:, :, :64, :64]
    assert _alloc.new_output(small, weight, check_conv_args(small, weight, None, 2, 3, 1, 1), zeroed=True)[1] == (
        0,
        0,
    )  # too small to matter
    monkeypatch.setattr(_alloc, "_fresh", lambda start, end: False)  # pages already there: filled instead
    assert _alloc.new_output(x, weight, g, zeroed=True)[1] == (0, 0)


def test_fresh_sample_sees_resident_pages():
    memory = mmap.mmap(-1, 64 * mmap.PAGESIZE)
    tensor = torch.frombuffer(memory, dtype=torch.uint8)
    start = tensor.data_ptr()
    assert _alloc._fresh(start, start + 64 * mmap.PAGESIZE)
    tensor[32 * mmap.PAGESIZE] = 1  # the page the third sample reads
    assert not _alloc._fresh(start, start + 64 * mmap.PAGESIZE)
    del tensor
    memory.close()


@pytest.mark.parametrize("bias", [None, "zeros", "mixed"])
def test_zeroed_outputs_equal_dense(bias):
    import torch.nn.functional as F

    import zeroskip

    generator = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 3, 576, 768)
    x[0, :, 100:140, 200:260] = torch.rand(3, 40, 60, generator=generator)
    weight = torch.randn(64, 3, 7, 7, generator=generator)
    values = None if bias is None else torch.zeros(64)
    if bias == "mixed":
        values[::2] = torch.randn(32, generator=generator)
        values[1] = -0.0
    for _ in range(2):  # the second call may get the first's memory back
        torch.testing.assert_close(zeroskip.conv2d(x, weight, values, 2, 3), F.conv2d(x, weight, values, 2, 3))


def test_populating_for_reading_keeps_values(monkeypatch):
    x, weight, g = _large_geometry()
    monkeypatch.setattr(_alloc, "_fresh", lambda start, end: True)
    out, (start, end) = _alloc.new_output(x, weight, g, zeroed=True)
    out[0, 3, 100, 7] = 2.5
    begin = out.data_ptr()
    inside = out.flatten()[(start - begin) // 4 : (end - begin) // 4]  # the rest is uninitialised
    calls = []
    advise = _alloc._MADVISE
    monkeypatch.setattr(_alloc, "_MADVISE", lambda *args: calls.append(args) or advise(*args))
    _alloc.populate_for_reading(out[1])  # one frame of the batch: its own memory only
    ((first, length, advice),) = calls
    frame = out[1].data_ptr()
    assert advice == _alloc._MADV_POPULATE_READ and frame <= first and first + length <= frame + out[1].nbytes
    _alloc.populate_for_reading(out)
    assert out[0, 3, 100, 7] == 2.5 and int(torch.count_nonzero(inside)) == 1
    _alloc.populate_for_reading(torch.zeros(4, 4))  # small: nothing to do
    assert len(calls) == 2
