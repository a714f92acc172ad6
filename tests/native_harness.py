"""Drives the native executor, scan, carry maps and max pooling from numpy alone (no PyTorch), against direct answers.

Run by ``tests/test_native_memory.py`` in a subprocess, with the library built with AddressSanitizer:
``python tests/native_harness.py LIBRARY CASES``. Random geometry (groups, strides, dilations,
padding, channels_last input and output, tiles of one pixel to the whole map, thread counts) and
random plans; every output must be the convolution where planned and the bias beyond the
vectors' reach (see native_cover.py), and the
scan's active rows must be those whose receptive field holds a non-zero value; random activity maps
dilated under random windows must be their direct maximum, and their tile map and rows exact; max
pooling under random windows, activity maps and background bands must be the window's maximum where
active and the background elsewhere.
"""

from __future__ import annotations

import ctypes
import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
from native_cover import written

_ABI = Path(__file__).resolve().parent.parent / "zeroskip" / "engine" / "_abi.py"


def _load_abi():
    spec = importlib.util.spec_from_file_location("zeroskip_abi", _ABI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _channels_last(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _reference(x, w, bias, groups, stride, dilation, padding, out_size) -> np.ndarray:
    (sh, sw), (dh, dw), (ph, pw), (ho, wo) = stride, dilation, padding, out_size
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cin, cout = x.shape[1] // groups, w.shape[0] // groups
    ref = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for g in range(groups):
        for ky in range(w.shape[2]):
            for kx in range(w.shape[3]):
                patch = xp[:, g * cin:(g + 1) * cin, ky * dh:ky * dh + sh * (ho - 1) + 1:sh,
                           kx * dw:kx * dw + sw * (wo - 1) + 1:sw]
                taps = w[g * cout:(g + 1) * cout, :, ky, kx]
                ref[:, g * cout:(g + 1) * cout] += np.einsum("bchw,oc->bohw", patch, taps)
    return ref + bias.reshape(1, -1, 1, 1)


def _check_scan(native, x, kernel, stride, dilation, padding, out_size, tile, threads, unit, row_step) -> None:
    """The scan's active output rows against the input rows under each output row."""
    batch, _, height, width = x.shape
    (ho, wo), (th, tw) = out_size, tile
    window = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
    tiles = np.zeros((batch, -(-ho // th), -(-wo // tw)), np.uint8)
    rows = np.zeros((batch, ho), np.uint8)
    x = x.astype(np.float32)
    steps = [s // 4 for s in x.strides]
    # A sample (every row_step-th unit of rows of tiles), then, into the same flags, the units it left.
    for rest in (0, 1) if row_step > 1 else (0,):
        native.zeroskip_scan(
            ctypes.c_void_p(x.ctypes.data), *[ctypes.c_int64(v) for v in (*x.shape, *steps)], ctypes.c_int(4),
            *[ctypes.c_int64(v) for v in (tiles.shape[1], th, stride[0], padding[0], window[0], ho,
                                          tiles.shape[2], tw, stride[1], padding[1], window[1])],
            ctypes.c_void_p(tiles.ctypes.data), ctypes.c_void_p(rows.ctypes.data), ctypes.c_int64(unit),
            ctypes.c_int64(row_step),
            ctypes.c_int(rest), ctypes.c_int(threads),
        )
    any_row = (x != 0).any(axis=(1, 3))
    for o in range(ho):
        top = o * stride[0] - padding[0]
        expected = any_row[:, max(top, 0):max(min(top + window[0], height), 0)].any(axis=1)
        assert (rows[:, o].astype(bool) == expected).all(), ("scan rows", o)


def _check_carry(native, rng: random.Random, numbers: np.random.Generator) -> None:
    """The dilation of an activity map (from ``zeroskip_dilate``), then its tile map and active rows
    (from ``zeroskip_carried_maps``), against direct answers."""
    batch, size = rng.randint(1, 3), (rng.randint(1, 150), rng.randint(1, 150))
    kernel, stride = (rng.randint(1, 7), rng.randint(1, 7)), (rng.randint(1, 3), rng.randint(1, 3))
    dilation, pad = (rng.randint(1, 2), rng.randint(1, 2)), (rng.randint(0, 3), rng.randint(0, 3))
    out_size = [max((n + 2 * p - d * (k - 1) - 1) // s + 1 + rng.randint(-1, 1), 1)
                for n, k, s, d, p in zip(size, kernel, stride, dilation, pad)]
    activity = (numbers.random((batch, *size)) < rng.choice([0.0, 0.02, 0.3, 1.0])).astype(np.uint8)
    out = np.empty((batch, *out_size), np.uint8)
    failed = native.zeroskip_dilate(
        ctypes.c_void_p(activity.ctypes.data), *[ctypes.c_int64(v) for v in (batch, *size, size[0] * size[1], size[1])],
        ctypes.c_void_p(out.ctypes.data),
        *[ctypes.c_int64(v) for v in (*out_size, kernel[0], stride[0], dilation[0], pad[0],
                                      kernel[1], stride[1], dilation[1], pad[1])],
    )
    assert failed == 0
    # Padded far enough on both sides for every window; each tap a strided slice.
    padded = np.zeros((batch, *[p + n + (o - 1) * s + d * (k - 1) + 1 for n, o, k, s, d, p in zip(
        size, out_size, kernel, stride, dilation, pad)]), np.uint8)
    padded[:, pad[0]:pad[0] + size[0], pad[1]:pad[1] + size[1]] = activity
    expected = np.zeros_like(out)
    for ty in range(kernel[0]):
        for tx in range(kernel[1]):
            top, left = ty * dilation[0], tx * dilation[1]
            window = padded[:, top:top + (out_size[0] - 1) * stride[0] + 1:stride[0],
                            left:left + (out_size[1] - 1) * stride[1] + 1:stride[1]]
            expected = np.maximum(expected, window)
    assert (out == expected).all(), ("dilate", batch, size, kernel, stride, dilation, pad, out_size)
    th, tw = rng.randint(1, 9), rng.randint(1, 20)
    tiles = np.empty((batch, -(-out_size[0] // th), -(-out_size[1] // tw)), np.uint8)
    rows = np.empty((batch, out_size[0]), np.uint8)
    native.zeroskip_carried_maps(
        ctypes.c_void_p(out.ctypes.data),
        *[ctypes.c_int64(v) for v in (batch, *out_size, out_size[0] * out_size[1], out_size[1], th, tw)],
        ctypes.c_void_p(tiles.ctypes.data), ctypes.c_void_p(rows.ctypes.data),
    )
    blocks = np.pad(out, ((0, 0), (0, -out_size[0] % th), (0, -out_size[1] % tw)))
    blocks = blocks.reshape(batch, tiles.shape[1], th, tiles.shape[2], tw)
    assert (tiles == blocks.any(axis=(2, 4))).all() and (rows == out.any(axis=2)).all(), ("carried maps", th, tw)


def _core_index(size: int, bands: tuple[int, int]) -> np.ndarray:
    """Each position's row (column) in a background core with ``bands`` (see zeroskip._background)."""
    lead, trail = bands
    if lead + trail >= size:
        return np.arange(size)
    return np.concatenate([np.arange(lead), np.full(size - lead - trail, lead), np.arange(lead + 1, lead + 1 + trail)])


def _check_pool(native, rng: random.Random, numbers: np.random.Generator) -> None:
    """Max pooling of a carried map (``zeroskip_max_pool``): the window's maximum, padding -inf and NaN
    winning, where the activity map is non-zero, the background elsewhere."""
    batch, channels, size = rng.randint(1, 3), rng.randint(1, 5), (rng.randint(1, 40), rng.randint(1, 70))
    kernel, stride = (rng.randint(1, 4), rng.randint(1, 4)), (rng.randint(1, 3), rng.randint(1, 3))
    dilation, pad = (rng.randint(1, 2), rng.randint(1, 2)), (rng.randint(0, 2), rng.randint(0, 2))
    # One output more than the windows that fit, as ceil_mode may have: its windows read padding only.
    out_size = [max((n + 2 * p - d * (k - 1) - 1) // s + 1 + rng.randint(0, 1), 1)
                for n, k, s, d, p in zip(size, kernel, stride, dilation, pad)]
    x = numbers.standard_normal((batch, channels, *size)).astype(np.float32)
    x[numbers.random(x.shape) < 0.05] = np.nan
    x[numbers.random(x.shape) < 0.05] = -np.inf
    x = _channels_last(x) if rng.random() < 0.5 else x
    out = np.full((batch, channels, *out_size), 7e30, np.float32)
    out = _channels_last(out) if rng.random() < 0.5 else out
    # A batch broadcast from one image reads its map with an image stride of 0.
    broadcast = rng.random() < 0.3
    activity = (numbers.random((1 if broadcast else batch, *out_size)) < rng.choice([0.0, 0.05, 0.5, 1.0]))
    activity = activity.astype(np.uint8) * numbers.integers(1, 256, activity.shape, dtype=np.uint8)
    bands = [(n, 0) if rng.random() < 0.2 else (rng.randint(0, (n - 1) // 2), rng.randint(0, (n - 1) // 2))
             for n in out_size]
    core_size = [n if sum(b) >= n else sum(b) + 1 for n, b in zip(out_size, bands)]
    core = numbers.standard_normal((rng.choice([1, batch]), channels, *core_size)).astype(np.float32)
    failed = native.zeroskip_max_pool(
        ctypes.c_void_p(x.ctypes.data), *[ctypes.c_int64(v) for v in (*x.shape, *[s // 4 for s in x.strides])],
        ctypes.c_void_p(out.ctypes.data),
        *[ctypes.c_int64(v) for v in (*out_size, *[s // 4 for s in out.strides], *kernel, *stride, *dilation, *pad)],
        ctypes.c_void_p(activity.ctypes.data),
        *[ctypes.c_int64(v) for v in (0 if broadcast else out_size[0] * out_size[1], out_size[1])],
        ctypes.c_void_p(core.ctypes.data),
        *[ctypes.c_int64(v) for v in (core.shape[0], *core_size, *bands[0], *bands[1])],
        ctypes.c_int(rng.randint(1, 3)),
    )
    assert failed == 0
    padded = np.full((batch, channels, *[p + n + (o - 1) * s + d * (k - 1) + 1 for n, o, k, s, d, p in zip(
        size, out_size, kernel, stride, dilation, pad)]), -np.inf, np.float32)
    padded[:, :, pad[0]:pad[0] + size[0], pad[1]:pad[1] + size[1]] = x
    pooled = np.full(out.shape, -np.inf, np.float32)
    for ty in range(kernel[0]):
        for tx in range(kernel[1]):
            top, left = ty * dilation[0], tx * dilation[1]
            pooled = np.maximum(pooled, padded[:, :, top:top + (out_size[0] - 1) * stride[0] + 1:stride[0],
                                               left:left + (out_size[1] - 1) * stride[1] + 1:stride[1]])
    rows, cols = _core_index(out_size[0], bands[0]), _core_index(out_size[1], bands[1])
    field = core[:, :, rows][:, :, :, cols][np.arange(batch) % core.shape[0]]
    expected = np.where(np.broadcast_to(activity[:, None] != 0, out.shape), pooled, field)
    assert np.array_equal(out, expected, equal_nan=True), ("max pool", batch, size, kernel, stride, dilation, pad,
                                                           out_size, bands)


def run(library: str, cases: int) -> None:
    abi = _load_abi()
    native = ctypes.CDLL(library)
    abi.declare(native)
    rng = random.Random(0)
    checked = 0
    while checked < cases:
        seed = rng.randrange(1 << 30)
        numbers = np.random.default_rng(seed)
        batch, groups = rng.randint(1, 3), rng.choice([1, 1, 2, 3])
        # Whole vectors of output channels take the channel kernel; more than 16 input channels a group,
        # two chunks of taps.
        cin, cout = groups * rng.choice([1, 2, 3, 4, 18]), groups * rng.choice([1, 5, 13, 16, 32])
        kernel, stride = (rng.randint(1, 5), rng.randint(1, 5)), (rng.randint(1, 3), rng.randint(1, 3))
        dilation, padding = (rng.randint(1, 2), rng.randint(1, 2)), (rng.randint(0, 3), rng.randint(0, 3))
        height, width = rng.randint(1, 30), rng.randint(1, 60)
        ho = (height + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        wo = (width + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
        if ho < 1 or wo < 1:
            continue
        x = numbers.standard_normal((batch, cin, height, width)).astype(np.float32)
        w = numbers.standard_normal((cout, cin // groups, *kernel)).astype(np.float32)
        bias = numbers.standard_normal(cout).astype(np.float32)
        # An output that reads as +0.0: the executor leaves the +0.0 background unwritten.
        zeroed = rng.random() < 0.3
        if zeroed:
            bias[numbers.random(cout) < 0.5] = 0.0
        out = np.full((batch, cout, ho, wo), 0.0 if zeroed else np.nan, np.float32)
        x = _channels_last(x) if rng.random() < 0.5 else x
        out = _channels_last(out) if rng.random() < 0.5 else out
        th, tw = rng.choice([(1, 1), (1, 3), (2, 16), (16, 32), (ho, wo)])
        tiles = (numbers.random((batch, -(-ho // th), -(-wo // tw))) < 0.5).astype(np.uint8)
        rows = (numbers.random((batch, ho)) < 0.7).astype(np.uint8)
        core = bias.reshape(1, cout, 1, 1).copy()
        # A folded BatchNorm (and ReLU) on the computed outputs, half the time.
        folded = rng.random() < 0.5
        scale, shift = (numbers.standard_normal(cout).astype(np.float32) for _ in range(2))
        relu = rng.random() < 0.5
        steps = [s // 4 for s in x.strides], [s // 4 for s in out.strides]
        job = abi.Job(
            x.ctypes.data, batch, cin, height, width, *steps[0], groups, *kernel, *stride, *dilation, *padding, ho, wo,
            w.ctypes.data, cout // groups, cin // groups, w[0].size, bias.ctypes.data,
            *((scale.ctypes.data, shift.ctypes.data, int(relu)) if folded else (None, None, 0)),
            out.ctypes.data, *steps[1],
            tiles.ctypes.data, tiles.shape[1], tiles.shape[2], th, tw, rows.ctypes.data, rng.choice([-1, 0, 1]),
            core.ctypes.data,
            1, 1, 1, 0, 0, 0, 0, *((out.ctypes.data, out.ctypes.data + out.nbytes) if zeroed else (0, 0)),
        )
        assert native.zeroskip_execute(ctypes.byref(job), rng.choice([1, 2, 3])) == 0
        planned = np.repeat(np.repeat(tiles, th, 1), tw, 2)[:, :ho, :wo].astype(bool) & rows.astype(bool)[:, :, None]
        reference = _reference(x, w, bias, groups, stride, dilation, padding, (ho, wo))
        if folded:
            reference = reference * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
            reference = np.maximum(reference, 0) if relu else reference
        expected = written(out, planned[:, None], reference, bias.reshape(1, -1, 1, 1))
        assert np.allclose(out, expected, rtol=1e-4, atol=1e-4), (seed, float(np.abs(out - expected).max()))
        _check_scan(native, x * (numbers.random(x.shape) < 0.05), kernel, stride, dilation, padding, (ho, wo),
                    (th, tw), rng.choice([1, 2, 3]), rng.choice([1, 3, 8]), rng.choice([1, 1, 4]))
        _check_carry(native, rng, numbers)
        _check_pool(native, rng, numbers)
        checked += 1
    print(f"{checked} cases ok")


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]))
