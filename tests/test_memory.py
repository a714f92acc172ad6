"""Memory: no growth over thousands of calls with varying shapes, and a call's peak memory within
:data:`PEAK_RATIO` of the dense call's.

Resident memory is read from ``/proc/self/status`` after ``gc.collect()`` and ``malloc_trim``; peaks are
measured in a fresh interpreter with :func:`zeroskip.bench.peak_memory`, whose glibc settings
(:func:`zeroskip.bench.pin_malloc`) must not leak into the rest of the test session.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_pattern, make_weights

import zeroskip

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")

LEAK_CALLS = 2000
# Allowed growth of the resident set after the warm-up: allocator noise. A leak of the outputs alone
# (>= 10 KiB per call) would add 20 MiB.
LEAK_BYTES = 4 << 20
LEAK_BYTES_SECOND_HALF = 2 << 20
LEAK_OBJECTS = 500
PEAK_RATIO = 1.25


def _resident_bytes() -> int:
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmRSS in /proc/self/status")


# Distinct input shapes the calls cycle through; with the modes, patterns and layouts below, the calls
# repeat every LEAK_PERIOD. PyTorch's own caches (oneDNN primitives, allocator pools) grow with every new
# shape up to their bounds; the warm-up lets them see every call once.
SHAPES = [(1 + i % 3, 3, 16 + i // 3 % 10, 20 + 3 * (i // 30)) for i in range(150)]
LEAK_PERIOD = 300


def _call(index: int, weights: dict, model: torch.nn.Module) -> None:
    """Call number ``index``: shape, pattern, mode, layout and entry point all vary with it."""
    mode = zeroskip.MODES[index % len(zeroskip.MODES)]
    pattern = ("blobs", "zeros", "pixel_bottom_right", "mixed_batch", "dense")[index % 5]
    x = make_pattern(pattern, SHAPES[index % len(SHAPES)], seed=index % 50)
    if index % 4 == 1:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = weights[index % 2]
    if index % 10 == 9:
        model(x)
    else:
        zeroskip.conv2d(x, weight, bias, stride=1 + index % 2, padding=1, mode=mode, tile_size=(4, 5))


def test_no_growth_over_thousands_of_calls():
    weights = {0: make_weights(8, 3, (3, 3)), 1: make_weights(8, 3, (3, 3), bias=False, seed=2)}
    torch.manual_seed(0)
    model = zeroskip.sparsify_(torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3)
    ).eval(), mode="tiles")
    with torch.no_grad():
        # Warm up: the caches and allocator pools reach their steady state.
        for index in range(LEAK_PERIOD):
            _call(index, weights, model)
        objects, resident = len(gc.get_objects()), [_resident_bytes()]
        for index in range(LEAK_CALLS):
            _call(index, weights, model)
            if index + 1 == LEAK_CALLS // 2:
                resident.append(_resident_bytes())
        grown_objects = len(gc.get_objects()) - objects
        resident.append(_resident_bytes())
    grown = f"resident set (MiB) {[round(r / 2**20, 1) for r in resident]} over {LEAK_CALLS} calls"
    print(grown)
    assert grown_objects < LEAK_OBJECTS, f"{grown_objects} more live Python objects after {LEAK_CALLS} calls"
    assert resident[2] - resident[0] < LEAK_BYTES, grown
    assert resident[2] - resident[1] < LEAK_BYTES_SECOND_HALF, grown


_PEAK_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import torch.nn.functional as F
    import zeroskip
    from zeroskip.bench import peak_memory, pin_malloc

    torch.set_num_threads(1)
    shape, out_channels, kernel, stride, padding, mode = json.loads(sys.argv[1])
    generator = torch.Generator().manual_seed(0)
    x = torch.zeros(shape)
    # Objects on about 5% of the image, as in masked video.
    batch, channels, height, width = shape
    for b in range(batch):
        for top, left in ((height // 5, width // 3), (height // 2, width // 7), (3 * height // 4, 3 * width // 5)):
            x[b, :, top : top + height // 8, left : left + width // 9] = torch.rand(
                channels, height // 8, width // 9, generator=generator)
    weight = torch.randn(out_channels, channels, kernel, kernel, generator=generator)
    reason = pin_malloc()
    if reason:
        print(json.dumps({"skip": reason}))
        sys.exit(0)
    dense = lambda: F.conv2d(x, weight, None, stride, padding)
    sparse = lambda: zeroskip.conv2d(x, weight, None, stride, padding, mode=mode)
    with torch.no_grad():
        torch.testing.assert_close(sparse(), dense())
        peaks = [(peak_memory(dense), peak_memory(sparse)) for _ in range(2)]
    print(json.dumps({"dense": min(d for d, _ in peaks), "sparse": min(s for _, s in peaks)}))
""")

PEAK_CASES = {
    # The original experiment's first layer on a masked 576x768 frame.
    "stem_7x7s2_vtest_frame": ((1, 3, 576, 768), 64, 7, 2, 3),
    # A ResNet stage-1 layer on sparse activations.
    "resnet_3x3_layer": ((2, 64, 144, 192), 64, 3, 1, 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "tiles", "rows"])
@pytest.mark.parametrize("case", PEAK_CASES)
def test_peak_memory_within_ratio_of_dense(case, mode):
    arguments = json.dumps([*PEAK_CASES[case], mode])
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, arguments], capture_output=True, text=True,
                          timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    ratio = result["sparse"] / result["dense"]
    print(f"{case} {mode}: dense {result['dense'] / 2**20:.1f} MiB, zeroskip {result['sparse'] / 2**20:.1f} MiB,"
          f" ratio {ratio:.2f}")
    assert ratio <= PEAK_RATIO, f"peak {ratio:.2f}x the dense call's ({result})"
