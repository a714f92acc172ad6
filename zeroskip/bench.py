"""The benchmark suite behind ``zeroskip bench``: dense ``F.conv2d`` against zeroskip on masked video,
on synthetic densities, on inner layers and through whole networks, with the speed targets of the
project checked.

Every comparison runs its functions (dense, zeroskip, and writing the output once) in one process,
alternating block by block after a warm-up; each figure is the median over the blocks, with the
interquartile range as its spread. Threads are set and recorded, seeds are pinned, glibc's heap is
kept warm (see :func:`pin_timing_heap`), and the machine, the allocator state, the torch version and
the zeroskip commit are written next to the numbers. ``benchmarks/README.md`` describes the method
in full.

Writes ``results.json``, ``results.md`` and ``results.png`` under ``--out``, each atomically, and only
once every workload has finished.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime
import functools
import gc
import io
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import __version__
from ._profiler import CallRecord, profile

_REPO = Path(__file__).resolve().parent.parent
# A source checkout (editable install) writes into the repository, where the results are committed.
_IN_REPO = (_REPO / "benchmarks").is_dir() and (_REPO / "pyproject.toml").is_file()
DEFAULT_OUT = _REPO / "benchmarks" / "results" if _IN_REPO else Path("zeroskip-bench")
DEFAULT_VIDEO = _REPO.parent / "shared" / "data" / "vtest.avi"
OUTPUT_NAMES = ("results.json", "results.md", "results.png")

# Pixel densities of the synthetic sweep (W3), and the row-band and scattered-dot patterns beside it.
DENSITIES = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
QUICK_DENSITIES = (0.0, 0.01, 0.05, 0.2, 1.0)
PATTERNS = (("bands", 0.1), ("bands", 0.4), ("dots", 0.002))
QUICK_PATTERNS = (("bands", 0.1),)
SPARSE_MODES = ("rows", "tiles", "auto")

# Whole-network models (W5): every one on the masked and the unmasked frames, these also at 1080p.
NETWORK_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "fcn_resnet50")
NETWORK_HD_MODELS = ("resnet18", "resnet50")

# The speed targets (issue 3; W5: issue 5).
TARGET_SPEEDUP = {("W1", 1): 5.0, ("W1", 16): 4.0, ("W2", 1): 5.0, ("W2", 16): 5.0}
# (model, input size (H, W)) -> speed-up on the masked frames, batch 1.
TARGET_NETWORK_SPEEDUP = {("resnet18", (576, 768)): 1.5, ("resnet18", (1080, 1920)): 2.0}
# Every model on the unmasked frames: zeroskip at most 3 % slower than dense.
TARGET_NETWORK_DENSE_INPUT = 0.97
TARGET_EFFICIENCY = 0.5
TARGET_AUTO_VS_DENSE = 1.03
TARGET_AUTO_VS_BEST = 1.10
TARGET_SWEEP_DENSITY, TARGET_SWEEP_SPEEDUP = 0.05, 2.0
TARGET_MEMORY_RATIO = 1.25

# At most this many calls make one timed block, however short the call.
_MAX_CALLS = 1000


@dataclass(frozen=True)
class InnerLayer:
    """A W4 layer; its input is the frame mask reduced ``scale`` times, times random positive values."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    scale: int = 4


INNER_LAYERS = (
    InnerLayer("3x3 64->64 s1", 64, 64, 3, padding=1),
    InnerLayer("3x3 128->128 s2", 128, 128, 3, stride=2, padding=1),
    InnerLayer("1x1 256->64", 256, 64, 1),
    InnerLayer("depthwise 3x3 128", 128, 128, 3, padding=1, groups=128),
    InnerLayer("3x3 64->64 dilation 2", 64, 64, 3, padding=2, dilation=2),
)


@dataclass(frozen=True)
class Settings:
    """What one run of the suite does. :func:`main` builds it from the command line.

    Attributes:
        out: directory for ``results.json``, ``results.md`` and ``results.png``.
        workloads: keys of :data:`WORKLOADS` to run, in order.
        quick: the reduced variant (recorded; the other fields already carry its reductions).
        threads: ``torch.set_num_threads`` for the whole run.
        repeats: timed blocks per function.
        min_block_s: a block repeats a call until it lasts at least this long.
        video: the clip W1, W2 and W4 mask (vtest.avi).
        first_frame: start of the benchmark window; the frames before it train the background subtractor.
        frames: frames in the benchmark window; batch 1 runs each of them in turn.
        hd_frames: frames of the window used at 1080p (W2) for batch 1.
        batches: batch sizes of W1 and W2.
        hd_size: ``(H, W)`` W2 resizes the frames to.
        sweep_size: ``(H, W)`` of the synthetic W3 frames.
        densities: W3 blob densities.
        patterns: W3 extra patterns, ``(kind, density)`` with kind ``"bands"`` or ``"dots"``.
        network_models: W5 models (:data:`zeroskip.models.MODELS`), each on masked and unmasked frames.
        network_hd_models: W5 models also run on the masked frames resized to ``hd_size``.
        network_frames: frames of the window W5 cycles through (batch 1), each checked against dense.
        network_repeats: timed blocks per function in W5 (a network call is long), rounded up to a multiple
            of ``network_frames`` so that every frame is timed equally often.
        peer: time spconv next to W1 when it is installed.
        memory: measure peak memory.
        note: free text stored with the results (e.g. "provisional run on a busy machine").
    """

    out: Path = DEFAULT_OUT
    workloads: tuple[str, ...] = ("W1", "W2", "W3", "W4", "W5")
    quick: bool = False
    threads: int = 2
    repeats: int = 11
    min_block_s: float = 0.1
    video: Path | None = None
    first_frame: int = 100
    frames: int = 16
    hd_frames: int = 16
    batches: tuple[int, ...] = (1, 16)
    hd_size: tuple[int, int] = (1080, 1920)
    sweep_size: tuple[int, int] = (576, 768)
    densities: tuple[float, ...] = DENSITIES
    patterns: tuple[tuple[str, float], ...] = PATTERNS
    network_models: tuple[str, ...] = NETWORK_MODELS
    network_hd_models: tuple[str, ...] = NETWORK_HD_MODELS
    network_frames: int = 4
    network_repeats: int = 8
    peer: bool = True
    memory: bool = True
    note: str = ""

    @classmethod
    def quick_variant(cls, **overrides: object) -> Settings:
        """The ``--quick`` settings: fewer repeats, frames and densities, batch 1 only, ResNet-18 only."""
        base = {
            "quick": True, "repeats": 5, "min_block_s": 0.03, "frames": 8, "hd_frames": 3, "batches": (1,),
            "densities": QUICK_DENSITIES, "patterns": QUICK_PATTERNS, "network_models": ("resnet18",),
            "network_hd_models": ("resnet18",), "network_frames": 2, "network_repeats": 4,
        }
        return cls(**{**base, **overrides})


# Timing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Time per call of one function in milliseconds: median, quartiles and extremes over the blocks."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    blocks: int
    calls_per_block: int

    @classmethod
    def of(cls, seconds: Sequence[float], calls: int) -> Timing:
        ms = sorted(s * 1e3 for s in seconds)
        q1, q3 = statistics.quantiles(ms, n=4, method="inclusive")[::2] if len(ms) > 1 else (ms[0], ms[0])
        return cls(statistics.median(ms), q1, q3, ms[0], ms[-1], len(ms), calls)


def measure(functions: dict[str, Callable[[], object]], repeats: int, min_block_s: float) -> dict[str, Timing]:
    """Time ``functions`` against each other: warm up, then alternate timed blocks of each.

    Each function runs twice untimed (first-call costs such as oneDNN primitive creation stay out),
    and the second run sizes its block: as many calls as last ``min_block_s``. Then ``repeats``
    rounds time one block of every function, the order rotating each round so that none always
    runs right after the same other. The garbage collector is off while timing, as in ``timeit``.

    Returns:
        Per function, the :class:`Timing` of one call.
    """
    calls = {}
    for name, function in functions.items():
        function()
        start = time.perf_counter()
        function()
        once = time.perf_counter() - start
        calls[name] = min(_MAX_CALLS, max(1, math.ceil(min_block_s / max(once, 1e-9))))
    names = list(functions)
    samples: dict[str, list[float]] = {name: [] for name in names}
    collecting = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(repeats):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                function, count = functions[name], calls[name]
                start = time.perf_counter()
                for _ in range(count):
                    function()
                samples[name].append((time.perf_counter() - start) / count)
    finally:
        if collecting:
            gc.enable()
    return {name: Timing.of(samples[name], calls[name]) for name in names}


# Allocator and peak memory -----------------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Memory measurement: glibc serves blocks at least this large with their own mapping, returned to the
# system when freed.
_MMAP_THRESHOLD = 128 << 10
# Timing: blocks below this come from the heap, which keeps up to this much free memory.
_TIMING_THRESHOLD = 1 << 30


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {key}")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)


def _pin_thresholds(threshold: int) -> str:
    """Fix glibc's mmap and trim thresholds at ``threshold`` bytes. ``""`` when done, else why not."""
    try:
        libc = _libc()
        pinned = libc.mallopt(_M_MMAP_THRESHOLD, threshold) and libc.mallopt(_M_TRIM_THRESHOLD, threshold)
    except (OSError, AttributeError) as error:
        return f"needs glibc mallopt ({error})"
    return "" if pinned else "glibc mallopt refused the thresholds"


def pin_timing_heap() -> str:
    """Keep the heap warm for timing: glibc's mmap and trim thresholds pinned to 1 GiB.

    With glibc's defaults, a block above the mmap threshold (32 MiB at most, e.g. oneDNN's scratch
    for a large dense convolution) is mapped fresh on every call and its pages faulted in again, and
    the dynamic threshold makes that depend on the process's history: on the project's machine dense
    ``F.conv2d`` of the W1 layer took about 3x as long as with a warm heap, and every speed-up swung
    2-3x from run to run. Pinned, such blocks are served from the heap and reused, so the dense
    baseline is measured at its best and speed-ups err on the low side. Called at the start of
    :func:`run`.

    Returns:
        The allocator state, for the metadata.
    """
    reason = _pin_thresholds(_TIMING_THRESHOLD)
    if reason:
        return f"default (thresholds not pinned: {reason})"
    return "glibc, mmap/trim thresholds pinned to 1 GiB for timing"


def pin_malloc() -> str:
    """Make the resident set follow live memory, so that its high-water mark measures a call's peak.

    glibc raises its mmap threshold as large blocks are freed and then recycles them from the heap,
    which hides a new allocation from the resident set. Fixing the thresholds gives every block of
    128 KiB or more its own mapping, unmapped when freed. Called once, after all timing is done.

    Returns:
        ``""`` when peak memory can be measured here, else why not.
    """
    if not (os.path.exists("/proc/self/clear_refs") and os.path.exists("/proc/self/status")):
        return "needs Linux /proc/self/clear_refs"
    reason = _pin_thresholds(_MMAP_THRESHOLD)
    if reason:
        return reason
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError) as error:
        return f"needs glibc malloc_trim ({error})"
    return ""


def peak_memory(function: Callable[[], object]) -> int:
    """Bytes by which the process's resident set rose at its highest during ``function()``.

    Returns free heap pages to the system (``malloc_trim``), resets the kernel's high-water mark
    (``/proc/self/clear_refs``), runs ``function`` and reads the mark back, so it sees every page the
    call touches: PyTorch's allocator, oneDNN's buffers and zeroskip's own mappings alike. Run
    :func:`pin_malloc` first.
    """
    gc.collect()
    _libc().malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _status_bytes("VmRSS")
    function()
    return max(0, _status_bytes("VmHWM") - before)


# Inputs ------------------------------------------------------------------------------------------


def _cache_path(video: Path, first: int, count: int) -> Path:
    stat = video.stat()
    name = f"{video.stem}-{stat.st_size}-{int(stat.st_mtime)}-{first}-{count}.pt"
    return Path(tempfile.gettempdir()) / "zeroskip-bench" / name


def video_frames(video: Path, count: int) -> Iterator[Any]:
    """The first ``count`` frames of ``video`` (BGR ``uint8`` arrays, as OpenCV decodes them).

    Raises:
        ValueError: the video cannot be read or is shorter than ``count`` frames.
    """
    from .masking import _cv2

    capture = _cv2().VideoCapture(str(video))
    try:
        for index in range(count):
            ok, frame = capture.read()
            if not ok:
                raise ValueError(f"`video` must have at least {count} readable frames, got {index} in {video}")
            yield frame
    finally:
        capture.release()


def masked_frames(video: Path, count: int, first: int) -> torch.Tensor:
    """Frames ``first .. first + count - 1`` of ``video`` masked as in the original experiment.

    The background subtractor sees every frame from the start of the clip, so frames before
    ``first`` train it. The masked frames are cached as uint8 under the temporary directory.

    Returns:
        Float ``(count, 3, H, W)`` RGB in ``[0, 1]``, zero outside moving objects.

    Raises:
        ValueError: the video cannot be read or is shorter than ``first + count`` frames.
    """
    from .masking import BackgroundMasker, frames_to_tensor

    cache = _cache_path(video, first, count)
    if cache.exists():
        with contextlib.suppress(Exception):  # an unreadable cache is rebuilt below
            return frames_to_tensor(list(torch.load(cache, weights_only=True).numpy()))
    masker = BackgroundMasker()
    # Every frame goes through the subtractor, so that it has learnt the background by ``first``.
    kept = list(itertools.islice((masker(frame) for frame in video_frames(video, first + count)), first, None))
    cache.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(cache, _tensor_bytes(torch.stack([torch.from_numpy(frame) for frame in kept])))
    return frames_to_tensor(kept)


def raw_frames(video: Path, count: int, first: int) -> torch.Tensor:
    """Frames ``first .. first + count - 1`` of ``video``, unmasked: float ``(count, 3, H, W)`` RGB in ``[0, 1]``.

    Raises:
        ValueError: the video cannot be read or is shorter than ``first + count`` frames.
    """
    from .masking import frames_to_tensor

    return frames_to_tensor(list(itertools.islice(video_frames(video, first + count), first, None)))


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


def blob_frame(size: tuple[int, int], density: float, generator: torch.Generator) -> torch.Tensor:
    """A synthetic ``(1, 3, H, W)`` frame whose non-zero pixels, exactly ``density`` of them, form blobs.

    The blobs are the highest points of smooth random noise (one random value per 16x16 pixels,
    upsampled bicubically), so lower densities give fewer and smaller blobs, as a mask would.
    """
    height, width = size
    count = round(density * height * width)
    values = torch.rand(1, 3, height, width, generator=generator) * 0.9 + 0.1
    if count >= height * width:
        return values
    noise = torch.rand(1, 1, height // 16 + 2, width // 16 + 2, generator=generator)
    field_ = F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False).flatten()
    mask = torch.zeros(height * width, dtype=torch.bool)
    mask[field_.topk(count).indices] = True
    return values * mask.view(1, 1, height, width)


def pattern_frame(size: tuple[int, int], kind: str, density: float, generator: torch.Generator) -> torch.Tensor:
    """A synthetic ``(1, 3, H, W)`` frame: ``"blobs"``, full-width row ``"bands"`` (16 rows each) covering
    ``density`` of the rows, or isolated ``"dots"`` (single pixels) at ``density``."""
    height, width = size
    values = torch.rand(1, 3, height, width, generator=generator) * 0.9 + 0.1
    if kind == "blobs":
        return blob_frame(size, density, generator)
    if kind == "bands":
        band = min(16, height)
        starts = torch.randperm(height // band, generator=generator)[: round(density * height / band)] * band
        rows = torch.zeros(height, dtype=torch.bool)
        for start in starts.tolist():
            rows[start : start + band] = True
        return values * rows.view(1, 1, height, 1)
    if kind == "dots":
        picked = torch.randperm(height * width, generator=generator)[: round(density * height * width)]
        mask = torch.zeros(height * width, dtype=torch.bool)
        mask[picked] = True
        return values * mask.view(1, 1, height, width)
    raise ValueError(f"`kind` must be blobs, bands or dots, got {kind!r}")


def _pixel_density(inputs: Sequence[torch.Tensor]) -> float:
    return statistics.fmean(float(x.ne(0).any(1).float().mean()) for x in inputs)


def _layer(in_channels: int, out_channels: int, kernel: int, seed: int, **options: object) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(in_channels, out_channels, kernel, **options).requires_grad_(False)


def original_layer() -> nn.Conv2d:
    """The original experiment's layer, ``Conv2d(3, 64, 7, stride=2, padding=3, bias=False)``, seeded."""
    return _layer(3, 64, 7, seed=0, stride=2, padding=3, bias=False)


# Rows --------------------------------------------------------------------------------------------


def _conv_args(conv: nn.Conv2d) -> dict[str, object]:
    return {
        "weight": conv.weight, "bias": conv.bias, "stride": conv.stride, "padding": conv.padding,
        "dilation": conv.dilation, "groups": conv.groups,
    }


def _each(function: Callable[[Any], object], inputs: Sequence[Any]) -> Callable[[], None]:
    """One benchmark call: ``function`` on every input in turn, each output dropped at once."""

    def run() -> None:
        for x in inputs:
            function(x)

    return run


def _fill_like_engine(shape: torch.Size, bias: torch.Tensor | None) -> torch.Tensor:
    out = torch.empty(shape)
    return out.zero_() if bias is None else out.copy_(bias.view(1, -1, 1, 1).expand(shape))


def _mismatch(dense: Callable[[torch.Tensor], torch.Tensor], sparse: Callable[[torch.Tensor], torch.Tensor],
              inputs: Sequence[torch.Tensor]) -> tuple[list[torch.Size], str]:
    """Output shapes, and ``""`` if ``sparse`` equals ``dense`` on every input, else the first difference."""
    shapes = []
    for index, x in enumerate(inputs):
        expected = dense(x)
        shapes.append(expected.shape)
        try:
            torch.testing.assert_close(sparse(x), expected)
        except AssertionError as error:
            return shapes, f"input {index}: " + " ".join(str(error).split())[:300]
    return shapes, ""


def active_fraction(records: Sequence[CallRecord]) -> float:
    """The fraction of outputs computed over ``records``, each call weighted by its batch size."""
    weights = [record.input_shape[0] if len(record.input_shape) == 4 else 1 for record in records]
    return sum(w * r.active_fraction for w, r in zip(weights, records)) / max(1, sum(weights))


def _ran(records: Sequence[CallRecord]) -> str:
    counts = Counter(record.chosen for record in records)
    return ", ".join(f"{path}" + (f" x{n}" if n > 1 else "") for path, n in counts.most_common())


def _ideal(dense_ms: float, fill_ms: float, fraction: float) -> float:
    return dense_ms / (fill_ms + fraction * dense_ms)


@dataclass
class Context:
    """State shared by the workloads of one run."""

    settings: Settings
    memory_cases: list[tuple[dict, Callable[[], None], Callable[[], None]]] = field(default_factory=list)
    _frames: torch.Tensor | None = None

    def frames(self) -> torch.Tensor:
        """The masked benchmark window of the video, ``(frames, 3, H, W)``."""
        if self._frames is None:
            self._frames = masked_frames(self.settings.video, self.settings.frames, self.settings.first_frame)
        return self._frames

    def log(self, line: str) -> None:
        print(line, flush=True)


def speed_row(ctx: Context, case: str, conv: nn.Conv2d, inputs: Sequence[torch.Tensor], **extra: object) -> dict:
    """Compare dense ``F.conv2d`` with ``zeroskip.conv2d`` (``mode="auto"``) running ``conv`` on ``inputs``.

    One call is one pass over ``inputs`` (several batch-1 frames, or one batch); the times are per
    input tensor. Checks that both agree before timing, and queues the case for peak memory.

    Returns:
        The row: times with spread, speed-up, active fraction, fill time, ideal speed-up, efficiency.
    """
    from .conv import conv2d

    args = _conv_args(conv)
    dense = lambda x: F.conv2d(x, **args)  # noqa: E731
    sparse = lambda x: conv2d(x, **args)  # noqa: E731
    shapes, mismatch = _mismatch(dense, sparse, inputs)
    with profile() as prof:
        _each(sparse, inputs)()
    timings = measure(
        {
            "dense": _each(dense, inputs),
            "zeroskip": _each(sparse, inputs),
            "fill": _each(lambda shape: _fill_like_engine(shape, args["bias"]), shapes),
        },
        ctx.settings.repeats, ctx.settings.min_block_s,
    )
    n = len(inputs)
    dense_ms, sparse_ms, fill_ms = (timings[k].median / n for k in ("dense", "zeroskip", "fill"))
    fraction = active_fraction(prof.records)
    ideal = _ideal(dense_ms, fill_ms, fraction)
    row = {
        "case": case,
        "batch": int(inputs[0].shape[0]),
        "input_shape": list(inputs[0].shape),
        "layer": _describe(conv),
        **extra,
        "pixel_density": _pixel_density(inputs),
        "dense_ms": dense_ms,
        "dense_iqr": [timings["dense"].q1 / n, timings["dense"].q3 / n],
        "zeroskip_ms": sparse_ms,
        "zeroskip_iqr": [timings["zeroskip"].q1 / n, timings["zeroskip"].q3 / n],
        "fill_ms": fill_ms,
        "speedup": dense_ms / sparse_ms,
        "active_fraction": fraction,
        "ideal_speedup": ideal,
        "efficiency": dense_ms / sparse_ms / ideal,
        "ran": _ran(prof.records),
        "exact": not mismatch,
        "mismatch": mismatch,
        "timings": {name: asdict(t) for name, t in timings.items()},
    }
    ctx.memory_cases.append((row, _each(dense, inputs), _each(sparse, inputs)))
    ctx.log(
        f"  {case:<28} dense {dense_ms:9.2f} ms  zeroskip {sparse_ms:9.2f} ms  {row['speedup']:6.2f}x"
        f"  active {fraction:6.1%}  efficiency {row['efficiency']:.2f}{'' if row['exact'] else '  MISMATCH'}"
    )
    return row


def _describe(conv: nn.Conv2d) -> str:
    text = f"Conv2d({conv.in_channels}, {conv.out_channels}, {conv.kernel_size[0]}, stride={conv.stride[0]}"
    text += f", padding={conv.padding[0]}"
    if conv.dilation != (1, 1):
        text += f", dilation={conv.dilation[0]}"
    if conv.groups != 1:
        text += f", groups={conv.groups}"
    return text + f", bias={conv.bias is not None})"


def _batched(frames: torch.Tensor, batch: int, count: int) -> list[torch.Tensor]:
    """Batch 1: each of the first ``count`` frames in turn; larger batches: the first ``batch`` frames."""
    if batch == 1:
        return [frame.unsqueeze(0) for frame in frames[:count]]
    return [frames[:batch].contiguous()]


# Workloads ---------------------------------------------------------------------------------------


def w1_original_layer(ctx: Context) -> dict:
    """W1: the original layer on masked vtest frames, plus the time breakdown and the spconv peer."""
    conv = original_layer()
    frames = ctx.frames()
    rows = [speed_row(ctx, f"W1 batch {b}", conv, _batched(frames, b, len(frames))) for b in ctx.settings.batches]
    section = {"title": "W1: the original layer on masked vtest frames", "kind": "speed", "rows": rows}
    section["breakdown"] = breakdown(_batched(frames, 1, len(frames)), conv, rows[0]["zeroskip_ms"])
    ctx.log("  breakdown: " + ", ".join(f"{s['step']} {s['share']:.0%}" for s in section["breakdown"].get("steps", [])))
    if ctx.settings.peer:
        section["peer"] = spconv_peer(ctx, conv, frames)
    return section


def w2_hd(ctx: Context) -> dict:
    """W2: the masked frames resized to 1080p with nearest-neighbour interpolation."""
    conv = original_layer()
    settings = ctx.settings
    count = max([settings.hd_frames] + [b for b in settings.batches if b > 1])
    hd = F.interpolate(ctx.frames()[:count], size=settings.hd_size, mode="nearest")
    rows = [
        speed_row(ctx, f"W2 batch {b}", conv, _batched(hd, b, settings.hd_frames)) for b in settings.batches
    ]
    return {"title": f"W2: masked frames at {settings.hd_size[1]}x{settings.hd_size[0]} (nearest)", "kind": "speed",
            "rows": rows}


def w3_density_sweep(ctx: Context) -> dict:
    """W3: every mode on synthetic frames of known density, the original layer, batch 1."""
    settings = ctx.settings
    conv = original_layer()
    generator = torch.Generator().manual_seed(3)
    rows = []
    for kind, density in [("blobs", d) for d in settings.densities] + list(settings.patterns):
        rows.append(sweep_row(ctx, f"{kind} {density:.1%}", conv, pattern_frame(settings.sweep_size, kind, density,
                                                                                 generator), pattern=kind,
                              density=density))
    return {"title": f"W3: density sweep, synthetic {settings.sweep_size[1]}x{settings.sweep_size[0]} frames, "
                     "original layer, batch 1", "kind": "sweep", "rows": rows}


def sweep_row(ctx: Context, case: str, conv: nn.Conv2d, x: torch.Tensor, **extra: object) -> dict:
    """Time dense ``F.conv2d`` and every zeroskip mode on ``x`` against each other.

    Returns:
        The row: per-mode times, the best fixed mode, auto's ratios to dense and to the best, speed-up,
        active fractions, ideal speed-up and efficiency (both for auto).
    """
    from .conv import conv2d

    args = _conv_args(conv)
    functions: dict[str, Callable[[torch.Tensor], object]] = {"dense": lambda x: F.conv2d(x, **args)}
    functions.update({mode: functools.partial(conv2d, **args, mode=mode) for mode in SPARSE_MODES})
    fractions, ran, mismatches = {}, {}, []
    for mode in SPARSE_MODES:
        shapes, mismatch = _mismatch(functions["dense"], functions[mode], [x])
        if mismatch:
            mismatches.append(f"{mode}: {mismatch}")
        with profile() as prof:
            functions[mode](x)
        fractions[mode], ran[mode] = active_fraction(prof.records), _ran(prof.records)
    timed = {name: _each(function, [x]) for name, function in functions.items()}
    timed["fill"] = _each(lambda shape: _fill_like_engine(shape, args["bias"]), shapes)
    timings = measure(timed, ctx.settings.repeats, ctx.settings.min_block_s)
    ms = {name: t.median for name, t in timings.items()}
    best = min(("dense",) + SPARSE_MODES[:-1], key=lambda name: ms[name])
    ideal = _ideal(ms["dense"], ms["fill"], fractions["auto"])
    row = {
        "case": case,
        **extra,
        "pixel_density": _pixel_density([x]),
        "ms": ms,
        "iqr": {name: [t.q1, t.q3] for name, t in timings.items()},
        "active_fraction": fractions,
        "auto_ran": ran["auto"],
        "best_fixed": best,
        "auto_vs_dense": ms["auto"] / ms["dense"],
        "auto_vs_best": ms["auto"] / ms[best],
        "speedup": ms["dense"] / ms["auto"],
        "ideal_speedup": ideal,
        "efficiency": ms["dense"] / ms["auto"] / ideal,
        "exact": not mismatches,
        "mismatch": "; ".join(mismatches),
    }
    ctx.log(
        f"  {case:<14} " + "  ".join(f"{name} {ms[name]:8.2f}" for name in functions)
        + f" ms  auto ran {ran['auto']}, best fixed {best}{'' if row['exact'] else '  MISMATCH'}"
    )
    return row


def w4_inner_layers(ctx: Context) -> dict:
    """W4: inner layers; input = the frame's mask reduced to the layer's resolution times random values."""
    frames = ctx.frames()
    mask = frames.ne(0).any(1, keepdim=True).float()
    generator = torch.Generator().manual_seed(4)
    rows = []
    for index, layer in enumerate(INNER_LAYERS):
        size = (frames.shape[-2] // layer.scale, frames.shape[-1] // layer.scale)
        reduced = F.adaptive_max_pool2d(mask, size)
        values = torch.rand(len(frames), layer.in_channels, *size, generator=generator) * 0.9 + 0.1
        x = reduced * values
        conv = _layer(
            layer.in_channels, layer.out_channels, layer.kernel, seed=100 + index, stride=layer.stride,
            padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
        )
        rows.append(speed_row(ctx, f"W4 {layer.name}", conv, _batched(x, 1, len(x))))
    return {"title": "W4: inner layers, masks from vtest reduced to the layer's resolution (max-pool), batch 1",
            "kind": "speed", "rows": rows}


# Whole networks (W5) -----------------------------------------------------------------------------


def stages(names: Sequence[str]) -> dict[str, str]:
    """Stage of each qualified convolution name: its top-level block, or the block below a
    container that holds most of the network (``features.3`` in MobileNet, ``backbone.layer2`` in FCN)."""
    stage = {name: name.split(".")[0] for name in names}
    for depth in (2, 3):
        crowded = {s for s, n in Counter(stage.values()).items() if n > len(stage) / 2}
        if not crowded:
            break
        stage = {name: ".".join(name.split(".")[:depth]) if stage[name] in crowded else stage[name] for name in names}
    return stage


def stage_fractions(records: Sequence[CallRecord]) -> dict[str, float]:
    """Mean active fraction of the convolutions of each stage (:func:`stages`), in network order."""
    stage_of = stages([r.name or "-" for r in records])
    groups: dict[str, list[float]] = defaultdict(list)
    for record in records:
        groups[stage_of[record.name or "-"]].append(record.active_fraction)
    return {stage: statistics.fmean(values) for stage, values in groups.items()}


def _cycling(model: nn.Module, inputs: Sequence[torch.Tensor]) -> Callable[[], None]:
    """One benchmark call: ``model`` on the next of ``inputs`` (in turn, round and round)."""
    cycle = itertools.cycle(inputs)

    def run() -> None:
        model(next(cycle))

    return run


def network_row(ctx: Context, case: str, model: str, dense: nn.Module, sparse: nn.Module,
                inputs: Sequence[torch.Tensor], **extra: object) -> dict:
    """Compare the dense ``model`` with its :func:`zeroskip.sparsify_` twin ``sparse`` on ``inputs``.

    First every input runs through both, untimed: the outputs (every tensor of them) must agree
    within ``torch.testing.assert_close``'s float32 tolerances with the absolute one scaled by the
    output's largest magnitude (as ``zeroskip video`` checks), and the sparse runs are profiled for
    the active fractions. Then :func:`measure` alternates timed blocks of both, each call running
    the next input in turn.

    Returns:
        The row: times with spread, speed-up, the fraction of the dense convolution work computed
        (``active_fraction``, multiply-accumulate weighted), the mean active fraction per stage
        (``stages``) and per convolution of the first input (``layers``), the largest difference
        relative to the largest output (``max_error``) and the check's verdict.
    """
    from .video import _tensors, assert_outputs_agree, work_fraction

    records: list[CallRecord] = []
    first_records: list[CallRecord] = []
    error, mismatch = 0.0, ""
    with torch.inference_mode():
        for index, x in enumerate(inputs):
            expected = dense(x)
            with profile() as prof:
                actual = sparse(x)
            records += prof.records
            first_records = first_records or prof.records
            for a, e in zip(_tensors(actual), _tensors(expected)):
                if e.numel():
                    error = max(error, float((a - e).abs().max()) / (float(e.abs().max()) or 1.0))
            try:
                assert_outputs_agree(actual, expected)
            except AssertionError as failure:
                mismatch = mismatch or f"input {index}: " + " ".join(str(failure).split())[:300]
        # Each block runs the next input: equal counts of every input, or one frame's cost would weigh more.
        repeats = -(-ctx.settings.network_repeats // len(inputs)) * len(inputs)
        timings = measure({"dense": _cycling(dense, inputs), "zeroskip": _cycling(sparse, inputs)},
                          repeats, ctx.settings.min_block_s)
    dense_t, sparse_t = timings["dense"], timings["zeroskip"]
    row = {
        "case": case,
        "model": model,
        **extra,
        "batch": int(inputs[0].shape[0]),
        "input_shape": list(inputs[0].shape),
        "frames": len(inputs),
        "pixel_density": _pixel_density(inputs),
        "dense_ms": dense_t.median,
        "dense_iqr": [dense_t.q1, dense_t.q3],
        "zeroskip_ms": sparse_t.median,
        "zeroskip_iqr": [sparse_t.q1, sparse_t.q3],
        "speedup": dense_t.median / sparse_t.median,
        "active_fraction": work_fraction(records, sparse),
        "stages": stage_fractions(records),
        "layers": [[r.name, r.chosen, r.active_fraction] for r in first_records],
        "ran": _ran(records),
        "max_error": error,
        "exact": not mismatch,
        "mismatch": mismatch,
        "timings": {name: asdict(t) for name, t in timings.items()},
    }
    ctx.log(
        f"  {case:<32} dense {row['dense_ms']:9.2f} ms  zeroskip {row['zeroskip_ms']:9.2f} ms  {row['speedup']:6.2f}x"
        f"  work {row['active_fraction']:6.1%}  stages {_stage_cell(row['stages'])}"
        + ("" if row["exact"] else "  MISMATCH")
    )
    return row


def w5_whole_networks(ctx: Context) -> dict:
    """W5: zoo models (:func:`zeroskip.models.build_model`) dense against sparsified, batch 1, on the
    masked frames, on the same resized to 1080p (nearest) and on the unmasked frames."""
    from .convert import sparsify_
    from .models import build_model

    settings = ctx.settings
    masked = ctx.frames()[: settings.network_frames]
    cases: dict[str, Callable[[], torch.Tensor]] = {
        "masked": lambda: masked,
        "masked hd": lambda: F.interpolate(masked, size=settings.hd_size, mode="nearest"),
        "unmasked": lambda: raw_frames(settings.video, len(masked), settings.first_frame),
    }
    inputs: dict[str, list[torch.Tensor]] = {}
    rows = []
    for model in dict.fromkeys(settings.network_models + settings.network_hd_models):
        dense = build_model(model)
        sparse = sparsify_(copy.deepcopy(dense))
        wanted = ["masked"] * (model in settings.network_models) + ["masked hd"] * (model in settings.network_hd_models)
        for kind in wanted + ["unmasked"] * (model in settings.network_models):
            if kind not in inputs:
                inputs[kind] = _batched(cases[kind](), 1, len(masked))
            height, width = inputs[kind][0].shape[-2:]
            case = f"W5 {model} {width}x{height}" + (" unmasked" if kind == "unmasked" else "")
            rows.append(network_row(ctx, case, model, dense, sparse, inputs[kind],
                                    input=kind.split()[0], size=[height, width]))
    return {
        "title": "W5: whole networks, dense against `zeroskip.sparsify_`, vtest frames, batch 1",
        "kind": "network",
        "rows": rows,
        "notes": [
            "*work*: the fraction of the dense convolutions' multiply-accumulates computed; *active per stage*:"
            " the mean active fraction of the convolutions of each stage (the active region grows with the"
            " receptive field, so deep stages densify); *unmasked*: the raw frames, where nothing can be skipped;"
            " *max error*: the largest difference over the largest output magnitude; *exact*: every output"
            " within assert_close's float32 tolerances, the absolute one scaled by the largest output magnitude.",
        ],
    }


@dataclass(frozen=True)
class Workload:
    """One entry of :data:`WORKLOADS`: ``run(ctx)`` returns a section of the results.

    A section is a dict with ``title``, ``kind`` (``"speed"``: rows from :func:`speed_row`; ``"sweep"``:
    W3's rows; ``"network"``: rows from :func:`network_row`) and ``rows``, optionally ``breakdown``,
    ``peer`` and ``notes``.
    """

    title: str
    needs_video: bool
    run: Callable[[Context], dict]
    needs_models: bool = False


# The registry of workloads.
WORKLOADS: dict[str, Workload] = {
    "W1": Workload("original layer on masked vtest frames", True, w1_original_layer),
    "W2": Workload("the same at 1080p", True, w2_hd),
    "W3": Workload("density sweep on synthetic frames, every mode", False, w3_density_sweep),
    "W4": Workload("inner layers with vtest masks", True, w4_inner_layers),
    "W5": Workload("whole networks on vtest frames", True, w5_whole_networks, needs_models=True),
}


# W1 breakdown ------------------------------------------------------------------------------------

# A Python frame in a zeroskip engine module (not this one), as torch.profiler names it:
# ".../zeroskip/_tiles.py(120)".
_PACKAGE_FILE = re.compile(r"zeroskip[/\\](?!bench\.py)\w+\.py\(\d+\)$")
BREAKDOWN_STEPS = ("activity check", "planning", "gather", "convolution", "scatter", "fill", "allocation", "python")
# The step of every operator called from these zeroskip functions (the innermost one listed wins).
_FUNCTION_STEPS = {
    "sampled_density": "activity check",
    "sample_activity": "activity check",
    "scan_activity": "activity check",
    "row_activity": "activity check",
    "cell_activity": "activity check",
    "_reduce_blocks": "activity check",
    "_band_buffer": "gather",
    "_pad_band": "gather",
    "_new_output": "fill",
    "empty_strided": "allocation",
}


def _operator_step(name: str, functions: Sequence[str]) -> str:
    """The breakdown step of one top-level operator, from its name and the zeroskip functions on its
    Python stack (innermost first)."""
    name = name.lower()
    if "conv" in name:
        return "convolution"
    if "empty" in name or "frombuffer" in name:
        return "allocation"
    listed = next((f for f in functions if f in _FUNCTION_STEPS), None)
    if listed:
        return _FUNCTION_STEPS[listed]
    if name in ("aten::zero_", "aten::fill_"):
        return "fill"
    if "index_put" in name or "scatter" in name or name == "aten::copy_":
        return "scatter"
    if name in ("aten::index", "aten::constant_pad_nd", "aten::pad") or "gather" in name:
        return "gather"
    return "planning"


def _is_python(event) -> bool:
    flag = getattr(event, "is_python_function", None)
    return flag if isinstance(flag, bool) else ".py(" in event.name or event.name.startswith("<")


def _zeroskip_functions(event) -> list[str]:
    """Names of the zeroskip functions on ``event``'s Python stack, innermost first."""
    names = []
    parent = event.cpu_parent
    while parent is not None:
        path, _, function = parent.name.rpartition(": ")
        if _PACKAGE_FILE.search(path):
            names.append(function)
        parent = parent.cpu_parent
    return names


def _top_operators(events) -> list:
    """Operators not called by another operator (their children's time is inside theirs)."""
    tops = []
    for event in events:
        if _is_python(event):
            continue
        parent = event.cpu_parent
        while parent is not None and _is_python(parent):
            parent = parent.cpu_parent
        if parent is None:
            tops.append(event)
    return tops


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's native log lines (Kineto writes them straight to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def breakdown(inputs: Sequence[torch.Tensor], conv: nn.Conv2d, measured_ms: float) -> dict:
    """Where a zeroskip call's time goes, by step (activity check, planning, gather, convolution, scatter,
    fill, allocation, Python), profiled from the outside on the real call.

    The call runs twice under ``torch.profiler``: once with Python stacks, to learn which zeroskip
    function called each top-level operator (that and the operator's name give its step, see
    :func:`_operator_step`), and once without, for operator times undistorted by stack tracing.
    The time outside operators is the Python step (plan logic, dispatch). Shares are scaled to the
    call's median time measured without the profiler.

    Returns:
        ``{"steps": [{"step", "ms", "share"}], "functions": [...], "operators": [...]}``, or
        ``{"error": ...}`` when the profiler cannot attribute the call.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from .conv import conv2d

    args = _conv_args(conv)
    run = _each(lambda x: conv2d(x, **args), inputs)
    run()
    try:
        with _quiet_stderr(), torch_profile(activities=[ProfilerActivity.CPU], with_stack=True) as traced:
            run()
        with _quiet_stderr(), torch_profile(activities=[ProfilerActivity.CPU]) as timed:
            start = time.perf_counter()
            run()
            wall_us = (time.perf_counter() - start) * 1e6
    except RuntimeError as error:
        return {"error": f"torch.profiler failed: {error}"}
    traced_ops = _top_operators(traced.events())
    timed_ops = _top_operators(timed.events())
    same = [a.name for a in traced_ops] == [b.name for b in timed_ops]
    times = [b.cpu_time_total for b in timed_ops] if same else [a.cpu_time_total for a in traced_ops]
    if not same:
        wall_us = sum(times)
    steps: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    operators: Counter[str] = Counter()
    for op, us in zip(traced_ops, times):
        stack = _zeroskip_functions(op)
        steps[_operator_step(op.name, stack)] += us
        functions[stack[0] if stack else "(outside zeroskip)"] += us
        operators[op.name] += us
    steps["python"] += max(0.0, wall_us - sum(times))
    total = sum(steps.values()) or 1.0

    def listed(counter: Counter[str], key: str, limit: int | None = None) -> list[dict]:
        return [
            {key: name, "ms": measured_ms * us / total, "share": us / total}
            for name, us in counter.most_common(limit)
        ]

    return {
        "inputs": len(inputs),
        "measured_ms": measured_ms,
        "attribution": "timed run" if same else "stack-traced run (operator sequences differed)",
        "steps": [s for s in listed(steps, "step") if s["share"] > 0],
        "order": list(BREAKDOWN_STEPS),
        "functions": listed(functions, "function", 10),
        "operators": listed(operators, "operator", 10),
    }


# Peer: spconv ------------------------------------------------------------------------------------


def spconv_peer(ctx: Context, conv: nn.Conv2d, frames: torch.Tensor) -> dict:
    """spconv's ``SparseConv2d`` (CPU) with W1's geometry and weights, next to dense and zeroskip.

    The masked frame becomes a ``SparseConvTensor`` of its non-zero pixels (``from_dense`` on the
    channels-last frame: a site is active when any channel is non-zero). spconv's weight layout is
    ``(C_out, kH, kW, C_in)``. Its output, made dense again, must equal ``F.conv2d`` (twice per input,
    as a race shows up only sometimes) before any timing; if it does not at the run's thread count,
    the whole comparison (dense and zeroskip included) is made at one thread, and the failure noted.
    Two spconv times are reported: the convolution alone on a ready sparse tensor, and the whole
    trip from the dense channels-last frame (conversion in, convolution, dense output).
    """
    try:
        import spconv
        import spconv.pytorch as spconv_torch
    except Exception as error:  # noqa: BLE001 - any import failure means "no peer", reported as such
        return {"status": "unavailable", "error": f"{type(error).__name__}: {error}"}
    rows, notes = [], []
    try:
        sparse_conv = spconv_torch.SparseConv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            bias=False,
        ).requires_grad_(False)
        if tuple(sparse_conv.weight.shape) != (conv.out_channels, *conv.kernel_size, conv.in_channels):
            raise ValueError(f"unexpected spconv weight layout {tuple(sparse_conv.weight.shape)}")
        sparse_conv.weight.copy_(conv.weight.permute(0, 2, 3, 1))
        for batch in ctx.settings.batches:
            inputs = _batched(frames, batch, len(frames))
            threads = torch.get_num_threads()
            mismatch = _spconv_mismatch(spconv_torch, sparse_conv, conv, inputs)
            if mismatch and threads > 1:
                notes.append(f"batch {batch}: at {threads} threads spconv's output differs from dense, and from run"
                             f" to run ({mismatch}); this comparison is made at 1 thread")
                with _threads(1):
                    mismatch = _spconv_mismatch(spconv_torch, sparse_conv, conv, inputs)
                    if not mismatch:
                        rows.append(_spconv_row(ctx, spconv_torch, sparse_conv, conv, inputs))
            elif not mismatch:
                rows.append(_spconv_row(ctx, spconv_torch, sparse_conv, conv, inputs))
            if mismatch:
                notes.append(f"batch {batch}: spconv's output differs from dense ({mismatch}); not timed")
    except Exception as error:  # noqa: BLE001 - a failing peer is a result, not a failed benchmark
        return {"status": "failed", "error": f"{type(error).__name__}: {' '.join(str(error).split())[:400]}",
                "rows": rows, "notes": notes}
    status = "ok" if rows else "failed"
    return {"status": status, "version": getattr(spconv, "__version__", "unknown"), "rows": rows, "notes": notes}


def _spconv_mismatch(spconv_torch, sparse_conv: nn.Module, conv: nn.Conv2d, inputs: Sequence[torch.Tensor]) -> str:
    """``""`` if spconv equals dense on every input, twice over, else the first difference."""
    args = _conv_args(conv)

    def run(x: torch.Tensor) -> torch.Tensor:
        return sparse_conv(spconv_torch.SparseConvTensor.from_dense(x.permute(0, 2, 3, 1).contiguous())).dense()

    _, mismatch = _mismatch(lambda x: F.conv2d(x, **args), run, [*inputs, *inputs])
    return mismatch


def _spconv_row(ctx: Context, spconv_torch, sparse_conv: nn.Module, conv: nn.Conv2d,
                inputs: Sequence[torch.Tensor]) -> dict:
    from .conv import conv2d

    args = _conv_args(conv)
    channels_last = [x.permute(0, 2, 3, 1).contiguous() for x in inputs]
    ready = [spconv_torch.SparseConvTensor.from_dense(x) for x in channels_last]
    timings = measure(
        {
            "dense": _each(lambda x: F.conv2d(x, **args), inputs),
            "zeroskip": _each(lambda x: conv2d(x, **args), inputs),
            "spconv conv only": _each(sparse_conv, ready),
            "spconv dense to dense": _each(
                lambda x: sparse_conv(spconv_torch.SparseConvTensor.from_dense(x)).dense(), channels_last
            ),
        },
        ctx.settings.repeats, ctx.settings.min_block_s,
    )
    row = {"batch": int(inputs[0].shape[0]), "threads": torch.get_num_threads()}
    row.update({f"{name} ms": t.median / len(inputs) for name, t in timings.items()})
    for name in ("zeroskip", "spconv conv only", "spconv dense to dense"):
        row[f"speedup {name}"] = row["dense ms"] / row[f"{name} ms"]
    ctx.log(
        f"  spconv batch {row['batch']} ({row['threads']} threads): conv only {row['spconv conv only ms']:.2f} ms,"
        f" dense to dense {row['spconv dense to dense ms']:.2f} ms, zeroskip {row['zeroskip ms']:.2f} ms,"
        f" dense {row['dense ms']:.2f} ms"
    )
    return row


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Targets -----------------------------------------------------------------------------------------


def _speed_rows(sections: dict[str, dict], name: str) -> list[dict]:
    return sections.get(name, {}).get("rows", [])


def evaluate_targets(sections: dict[str, dict]) -> list[dict]:
    """Each target of the issue with the measured figure and PASS, FAIL or NOT RUN."""
    targets = []

    def add(target: str, measured: float | None, passed: bool, shown: str | None = None) -> None:
        status = "NOT RUN" if measured is None else ("PASS" if passed else "FAIL")
        targets.append({"target": target, "measured": measured, "shown": shown or "-", "status": status})

    for (workload, batch), goal in TARGET_SPEEDUP.items():
        row = next((r for r in _speed_rows(sections, workload) if r["batch"] == batch), None)
        speedup = row["speedup"] if row else None
        add(f"{workload} batch {batch} speed-up >= {goal:g}x", speedup, bool(row) and speedup >= goal,
            row and f"{speedup:.2f}x")
    for (workload, batch) in TARGET_SPEEDUP:
        row = next((r for r in _speed_rows(sections, workload) if r["batch"] == batch), None)
        efficiency = row["efficiency"] if row else None
        add(f"{workload} batch {batch} efficiency >= {TARGET_EFFICIENCY:g}", efficiency,
            bool(row) and efficiency >= TARGET_EFFICIENCY, row and f"{efficiency:.2f}")
    sweep = _speed_rows(sections, "W3")
    if sweep:
        worst = max(sweep, key=lambda r: r["auto_vs_dense"])
        add(f"W3 auto at most {TARGET_AUTO_VS_DENSE - 1:.0%} slower than dense at every density",
            worst["auto_vs_dense"], worst["auto_vs_dense"] <= TARGET_AUTO_VS_DENSE,
            f"worst {worst['auto_vs_dense']:.3f}x dense ({worst['case']})")
        worst = max(sweep, key=lambda r: r["auto_vs_best"])
        add(f"W3 auto within {TARGET_AUTO_VS_BEST - 1:.0%} of the best fixed mode at every density",
            worst["auto_vs_best"], worst["auto_vs_best"] <= TARGET_AUTO_VS_BEST,
            f"worst {worst['auto_vs_best']:.3f}x {worst['best_fixed']} ({worst['case']})")
    at = next((r for r in sweep if r["pattern"] == "blobs" and r["density"] == TARGET_SWEEP_DENSITY), None)
    add(f"W3 auto >= {TARGET_SWEEP_SPEEDUP:g}x at {TARGET_SWEEP_DENSITY:.0%} pixel density",
        at and at["speedup"], bool(at) and at["speedup"] >= TARGET_SWEEP_SPEEDUP, at and f"{at['speedup']:.2f}x")
    networks = _speed_rows(sections, "W5")
    for (model, size), goal in TARGET_NETWORK_SPEEDUP.items():
        row = next((r for r in networks if (r["model"], r["input"], tuple(r["size"])) == (model, "masked", size)), None)
        speedup = row["speedup"] if row else None
        add(f"W5 {model} {size[1]}x{size[0]} masked, batch 1, speed-up >= {goal:g}x", speedup,
            bool(row) and speedup >= goal, row and f"{speedup:.2f}x")
    plain = [r for r in networks if r["input"] == "unmasked"]
    worst = min(plain, key=lambda r: r["speedup"], default=None)
    add(f"W5 every model on unmasked (dense) frames at most {1 - TARGET_NETWORK_DENSE_INPUT:.0%} slower than dense",
        worst and worst["speedup"], bool(worst) and worst["speedup"] >= TARGET_NETWORK_DENSE_INPUT,
        worst and f"worst {worst['speedup']:.3f}x ({worst['model']}; {len(plain)} model{'s' * (len(plain) > 1)})")
    measured = [r for s in sections.values() for r in s["rows"] if r.get("memory_ratio") is not None]
    worst = max(measured, key=lambda r: r["memory_ratio"], default=None)
    add(f"peak memory of a zeroskip call <= {TARGET_MEMORY_RATIO:g}x the dense call's",
        worst and worst["memory_ratio"], bool(worst) and worst["memory_ratio"] <= TARGET_MEMORY_RATIO,
        worst and f"worst {worst['memory_ratio']:.2f}x ({worst['case']})")
    rows = [r for s in sections.values() for r in s["rows"]]
    wrong = [r["case"] for r in rows if not r["exact"]]
    add("every zeroskip output equals dense (assert_close)", len(rows) if rows else None, not wrong,
        f"{len(rows) - len(wrong)}/{len(rows)} cases" + (f"; wrong: {', '.join(wrong)}" if wrong else ""))
    return targets


def _measure_memory(ctx: Context) -> str:
    """Fill ``dense_peak_mb``, ``zeroskip_peak_mb`` and ``memory_ratio`` of every queued row."""
    reason = pin_malloc()
    if reason:
        return f"peak memory not measured: {reason}"
    for row, dense, sparse in ctx.memory_cases:
        dense()
        sparse()
        dense_peak, sparse_peak = peak_memory(dense), peak_memory(sparse)
        row["dense_peak_mb"], row["zeroskip_peak_mb"] = dense_peak / 2**20, sparse_peak / 2**20
        row["memory_ratio"] = sparse_peak / dense_peak if dense_peak else None
        ctx.log(f"  {row['case']:<28} dense {row['dense_peak_mb']:8.1f} MB  zeroskip {row['zeroskip_peak_mb']:8.1f} MB")
    ctx.memory_cases.clear()
    return ""


# Metadata ----------------------------------------------------------------------------------------


def _run_git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def metadata(settings: Settings) -> dict:
    """Where the numbers come from: machine, versions, commit, threads, date and load."""
    cpu, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = value.split()
                break
    commit = _run_git("rev-parse", "HEAD") if (_REPO / ".git").exists() else None
    dirty = bool(_run_git("status", "--porcelain", "--untracked-files=no", "--", "zeroskip")) if commit else None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_simd": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "zeroskip": __version__,
        "zeroskip_commit": commit,
        "zeroskip_uncommitted_changes": dirty,
        "load_average_start": load,
        "quick": settings.quick,
        "note": settings.note,
    }


def _busy_note(meta: dict) -> str:
    """A warning when other processes competed for the cores during the run, else ``""``."""
    cores = meta["cpu_affinity"] or meta["cpu_count"] or 1
    loads = [load[0] for load in (meta["load_average_start"], meta["load_average_end"]) if load]
    if not loads or max(loads) <= cores:
        return ""
    return (f"the machine was busy: 1-minute load average up to {max(loads):.1f} on {cores} cores during the run."
            " Timings are unreliable, multi-threaded zeroskip ones most (its many short parallel operators each"
            " wait for descheduled threads); rerun on a quiet machine.")


# Report ------------------------------------------------------------------------------------------


def _ms(value: float, spread: Sequence[float] | None = None) -> str:
    text = f"{value:.2f}" if value < 100 else f"{value:.1f}"
    return text + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")


def _plain(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _memory_cell(row: dict) -> str:
    if row.get("memory_ratio") is None:
        return "-"
    return f"{row['memory_ratio']:.2f}x ({row['zeroskip_peak_mb']:.0f}/{row['dense_peak_mb']:.0f} MB)"


def _speed_table(rows: Sequence[dict]) -> list[str]:
    header = ("case", "input", "pixel density", "dense ms (IQR)", "zeroskip ms (IQR)", "speed-up", "active",
              "fill ms", "ideal", "efficiency", "ran", "peak mem zs/dense", "exact")
    return _table(header, [
        (r["case"], "x".join(map(str, r["input_shape"])), f"{r['pixel_density']:.2%}",
         _ms(r["dense_ms"], r["dense_iqr"]), _ms(r["zeroskip_ms"], r["zeroskip_iqr"]), f"**{r['speedup']:.2f}x**",
         f"{r['active_fraction']:.1%}",
         _ms(r["fill_ms"]), f"{r['ideal_speedup']:.2f}x", f"{r['efficiency']:.2f}", r["ran"], _memory_cell(r),
         "yes" if r["exact"] else "**NO**")
        for r in rows
    ])


def _sweep_table(rows: Sequence[dict]) -> list[str]:
    modes = ("dense",) + SPARSE_MODES
    header = ("pattern", "pixel density", *(f"{m} ms" for m in modes), "fill ms", "best fixed", "auto ran",
              "auto speed-up", "auto/dense", "auto/best", "active (tiles / rows)", "ideal", "efficiency", "exact")
    return _table(header, [
        (r["case"], f"{r['pixel_density']:.2%}", *(_ms(r["ms"][m]) for m in modes), _ms(r["ms"]["fill"]),
         r["best_fixed"], r["auto_ran"], f"**{r['speedup']:.2f}x**", f"{r['auto_vs_dense']:.3f}",
         f"{r['auto_vs_best']:.3f}", f"{r['active_fraction']['tiles']:.1%} / {r['active_fraction']['rows']:.1%}",
         f"{r['ideal_speedup']:.2f}x", f"{r['efficiency']:.2f}", "yes" if r["exact"] else "**NO**")
        for r in rows
    ])


def _stage_cell(stages_: dict[str, float]) -> str:
    """``conv1 6%, layer1 14%, ...``, without a prefix that every stage shares (``features.``)."""
    names = list(stages_)
    prefix = os.path.commonprefix(names)
    prefix = prefix[: prefix.rfind(".") + 1] if len(names) > 1 else ""
    return ", ".join(f"{name[len(prefix):]} {fraction:.0%}" for name, fraction in stages_.items())


def _network_table(rows: Sequence[dict]) -> list[str]:
    header = ("case", "input", "pixel density", "dense ms (IQR)", "zeroskip ms (IQR)", "speed-up", "work",
              "active per stage", "ran", "max error", "exact")
    return _table(header, [
        (r["case"], "x".join(map(str, r["input_shape"])), f"{r['pixel_density']:.2%}",
         _ms(r["dense_ms"], r["dense_iqr"]), _ms(r["zeroskip_ms"], r["zeroskip_iqr"]), f"**{r['speedup']:.2f}x**",
         f"{r['active_fraction']:.1%}", _stage_cell(r["stages"]), r["ran"], f"{r['max_error']:.1e}",
         "yes" if r["exact"] else "**NO**")
        for r in rows
    ])


_SECTION_TABLES = {"speed": _speed_table, "sweep": _sweep_table, "network": _network_table}


def render_markdown(results: dict) -> str:
    """``results.md``: metadata, targets, and one table per workload."""
    meta = results["metadata"]
    lines = ["# zeroskip benchmark results", ""]
    if meta.get("note"):
        lines += [f"> **{meta['note']}**", ""]
    lines += ["Produced by `zeroskip bench" + (" --quick" if meta["quick"] else "") + "`; method in"
              " `benchmarks/README.md`. Times are per input tensor (per frame at batch 1), medians of"
              f" {results['settings']['repeats']} alternating timed blocks, interquartile range in brackets.", ""]
    lines += _table(("", ""), [(key, _plain(value)) for key, value in meta.items() if key != "note"])
    lines += ["", f"Run time: {results['elapsed_s']:.0f} s."]
    lines += [f"\n**Note:** {note}" for note in results.get("notes", [])]
    lines += ["", "## Targets", ""]
    lines += _table(("target", "measured", "status"),
                    [(t["target"], t["shown"], f"**{t['status']}**") for t in results["targets"]])
    for name, section in results["sections"].items():
        lines += ["", f"## {section['title']}", ""]
        lines += _SECTION_TABLES[section["kind"]](section["rows"])
        for note in section.get("notes", []):
            lines += ["", note]
        if "breakdown" in section:
            lines += ["", f"### {name} breakdown: where a batch-1 zeroskip call spends its time", ""]
            lines += _breakdown_lines(section["breakdown"])
        if "peer" in section:
            lines += ["", "### Peer: spconv (CPU)", ""]
            lines += _peer_lines(section["peer"])
    return "\n".join(lines) + "\n"


def _breakdown_lines(result: dict) -> list[str]:
    if "error" in result:
        return [f"Not available: {result['error']}"]
    lines = [f"Profiled with torch.profiler over {result['inputs']} frames; shares scaled to the measured"
             f" {result['measured_ms']:.2f} ms per frame ({result['attribution']}).", ""]
    order = {step: i for i, step in enumerate(result["order"])}
    steps = sorted(result["steps"], key=lambda s: order.get(s["step"], len(order)))
    lines += _table(("step", "ms per frame", "share"),
                    [(s["step"], f"{s['ms']:.3f}", f"{s['share']:.1%}") for s in steps])
    lines += ["", "By zeroskip function:", ""]
    lines += _table(("function", "ms", "share"),
                    [(f"`{f['function']}`", f"{f['ms']:.3f}", f"{f['share']:.1%}") for f in result["functions"]])
    lines += ["", "Top operators:", ""]
    lines += _table(("operator", "ms", "share"),
                    [(f"`{o['operator']}`", f"{o['ms']:.3f}", f"{o['share']:.1%}") for o in result["operators"]])
    return lines


def _peer_lines(peer: dict) -> list[str]:
    lines = [f"spconv {peer['status']}: `{peer['error']}`", ""] if "error" in peer else []
    if peer.get("rows"):
        lines += [f"spconv {peer['version']}, `SparseConv2d` with W1's weights, output checked equal to dense"
                  " before timing. Times per frame (batch 1) or per batch, all four in one alternating loop.", ""]
        lines += _table(
            ("batch", "threads", "dense ms", "zeroskip ms", "spconv conv only ms", "spconv dense-to-dense ms",
             "speed-up zeroskip", "speed-up spconv (conv only)", "speed-up spconv (dense to dense)"),
            [(r["batch"], r["threads"], _ms(r["dense ms"]), _ms(r["zeroskip ms"]), _ms(r["spconv conv only ms"]),
              _ms(r["spconv dense to dense ms"]), f"{r['speedup zeroskip']:.2f}x",
              f"{r['speedup spconv conv only']:.2f}x", f"{r['speedup spconv dense to dense']:.2f}x")
             for r in peer["rows"]],
        )
    for note in peer.get("notes", []):
        lines += ["", f"Note: {note}"]
    return lines


def render_plot(results: dict) -> bytes | None:
    """``results.png``: W3 time against density per mode, and the speed-ups of W1, W2 and W4 with
    their ideal; with W5, a second row: its speed-ups, and the active fraction per stage. ``None``
    without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    sections = results["sections"]
    networks = sections.get("W5", {}).get("rows", [])
    figure = Figure(figsize=(13, 10 if networks else 5), layout="constrained")
    axes = figure.subplots(2 if networks else 1, 2, squeeze=False)
    sweep_axes, bar_axes = axes[0]
    sweep = [r for r in sections.get("W3", {}).get("rows", []) if r["pattern"] == "blobs"]
    if sweep:
        positions = range(len(sweep))
        for mode in ("dense",) + SPARSE_MODES:
            sweep_axes.plot(positions, [r["ms"][mode] for r in sweep], marker="o", label=mode,
                            linewidth=2.5 if mode == "auto" else 1.2)
        sweep_axes.set_xticks(list(positions), [f"{r['density']:.1%}" for r in sweep])
        sweep_axes.set_yscale("log")
        sweep_axes.set_xlabel("pixel density (random blobs)")
        sweep_axes.set_ylabel("ms per frame")
        sweep_axes.set_title("W3: time per mode against density")
        sweep_axes.legend()
    bars = [r for name in ("W1", "W2", "W4") for r in sections.get(name, {}).get("rows", [])]
    if bars:
        positions = range(len(bars))
        bar_axes.bar(positions, [r["speedup"] for r in bars], color="tab:blue", label="measured")
        bar_axes.scatter(positions, [r["ideal_speedup"] for r in bars], color="black", marker="_", s=300,
                         label="ideal", zorder=3)
        bar_axes.axhline(1.0, color="grey", linewidth=0.8)
        bar_axes.set_xticks(list(positions), [r["case"] for r in bars], rotation=35, ha="right", fontsize=8)
        bar_axes.set_yscale("log")
        bar_axes.set_ylabel("speed-up over dense")
        bar_axes.set_title("zeroskip speed-up (auto)")
        bar_axes.legend(loc="best", framealpha=0.6)
    for panel, empty, what in ((sweep_axes, not sweep, "W3"), (bar_axes, not bars, "W1, W2 and W4")):
        if empty:
            panel.text(0.5, 0.5, f"{what} not run", ha="center", va="center")
            panel.set_axis_off()
    if networks:
        _plot_networks(axes[1][0], axes[1][1], networks)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _plot_networks(speed_axes, stage_axes, rows: Sequence[dict]) -> None:
    """W5: speed-up per case (unmasked frames hatched), and the active fraction of each stage."""
    positions = range(len(rows))
    bars = speed_axes.bar(positions, [r["speedup"] for r in rows], color="tab:green", edgecolor="black", linewidth=0.5)
    for bar, row in zip(bars, rows):
        bar.set_hatch("//" if row["input"] == "unmasked" else "")
    speed_axes.axhline(1.0, color="grey", linewidth=0.8)
    speed_axes.axhline(TARGET_NETWORK_DENSE_INPUT, color="grey", linewidth=0.8, linestyle=":")
    speed_axes.set_xticks(list(positions), [r["case"].removeprefix("W5 ") for r in rows], rotation=35, ha="right",
                          fontsize=8)
    speed_axes.set_ylabel("speed-up over the dense model")
    speed_axes.set_title("W5: whole networks, batch 1 (hatched: unmasked frames)")
    longest = 1
    for row in (r for r in rows if r["input"] == "masked"):
        fractions = list(row["stages"].values())
        longest = max(longest, len(fractions))
        stage_axes.plot(range(len(fractions)), fractions, marker="o",
                        label=f"{row['case'].removeprefix('W5 ')}: {row['speedup']:.2f}x")
    stage_axes.set_xticks(range(0, longest, max(1, longest // 10)))
    stage_axes.set_ylim(0, 1.05)
    stage_axes.set_xlabel("stage, input to output\n(ResNet: conv1, layer1-4; FCN: the same, then its head;"
                          " MobileNetV2: features.0-18)", fontsize=9)
    stage_axes.set_ylabel("mean active fraction of its convolutions")
    stage_axes.set_title("W5: the active region grows with depth (masked frames)")
    stage_axes.legend(loc="best", fontsize=8, framealpha=0.6)


def _write_atomic(path: Path, data: bytes) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        # mkstemp makes the file private; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


# Running -----------------------------------------------------------------------------------------


def run(settings: Settings) -> dict:
    """Run the selected workloads, check the targets and write the three result files.

    Fixes glibc's malloc thresholds for the rest of the process: pinned high for timing first (see
    :func:`pin_timing_heap`), then low for measuring peak memory (see :func:`pin_malloc`), after all
    timing.

    Returns:
        The results, as written to ``results.json``.
    """
    started = time.perf_counter()
    allocator = pin_timing_heap()
    with _threads(settings.threads):
        ctx = Context(settings)
        meta = {**metadata(settings), "allocator": allocator}
        ctx.log(f"allocator: {allocator}")
        sections: dict[str, dict] = {}
        with torch.no_grad():
            for name in settings.workloads:
                ctx.log(f"{name}: {WORKLOADS[name].title}")
                sections[name] = WORKLOADS[name].run(ctx)
            notes = []
            if settings.memory:
                ctx.log("peak memory")
                reason = _measure_memory(ctx)
                if reason:
                    notes.append(reason)
        meta["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        busy = _busy_note(meta)
        if busy:
            notes.append(busy)
            ctx.log(f"warning: {busy}")
        results = {
            "metadata": meta,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
            "targets": evaluate_targets(sections),
            "sections": sections,
            "notes": notes,
            "elapsed_s": time.perf_counter() - started,
        }
    settings.out.mkdir(parents=True, exist_ok=True)
    plot = render_plot(results)
    if plot is None:
        results["notes"].append("results.png not written: matplotlib is not installed (pip install 'zeroskip[plot]').")
    _write_atomic(settings.out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    _write_atomic(settings.out / "results.md", render_markdown(results).encode())
    if plot is not None:
        _write_atomic(settings.out / "results.png", plot)
    return results


def _positive(kind: type, name: str) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value <= 0:
            raise argparse.ArgumentTypeError(f"`{name}` must be a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def _workload_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip().upper() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in WORKLOADS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"`--workloads` must be a comma list of {', '.join(WORKLOADS)}, got {text!r}")
    return tuple(dict.fromkeys(names))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2
        # Our own messages already name the option: drop argparse's "argument --x: " prefix.
        raise _UsageError(re.sub(r"^argument [^:]+: (?=`)", "", message))


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zeroskip bench", description="Benchmark zeroskip against dense convolution (issue 3).")
    parser.add_argument("--quick", action="store_true", help="the reduced run (under two minutes on 2 cores)")
    parser.add_argument("--threads", type=_positive(int, "--threads"), default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=None, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--workloads", type=_workload_list, default=None,
                        help=f"comma list of {', '.join(WORKLOADS)} (default all)")
    parser.add_argument("--repeats", type=_positive(int, "--repeats"), default=None,
                        help="timed blocks per function (default 11, 5 with --quick; W5: 8, 4 with --quick)")
    parser.add_argument("--video", type=Path, default=None, help=f"the vtest clip (default {DEFAULT_VIDEO})")
    parser.add_argument("--no-peer", action="store_true", help="skip the spconv peer")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--note", default="", help="text stored with the results, e.g. 'provisional run'")
    return parser


def _has_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed arguments, checked so that a run cannot fail on them halfway.

    Without torchvision, the default run leaves out the workloads that need it (W5).

    Raises:
        ValueError: a workload needs the video and none is found, OpenCV is missing, or torchvision
            is missing for a workload asked for by name.
    """
    workloads = args.workloads or tuple(WORKLOADS)
    if not _has_module("torchvision"):
        needing = ", ".join(name for name in WORKLOADS if WORKLOADS[name].needs_models)
        if args.workloads is None:  # the default run goes on without them
            print(f"zeroskip bench: {needing} skipped: torchvision is not installed (pip install 'zeroskip[models]')",
                  file=sys.stderr)
            workloads = tuple(name for name in workloads if not WORKLOADS[name].needs_models)
        elif any(WORKLOADS[name].needs_models for name in workloads):
            raise ValueError(f"`--workloads` {needing} need torchvision (pip install 'zeroskip[models]'),"
                             f" got {','.join(workloads)}")
    video = args.video if args.video is not None else DEFAULT_VIDEO
    if any(WORKLOADS[name].needs_video for name in workloads):
        if not video.is_file():
            raise ValueError(f"`--video` must be an existing file (vtest.avi), got {str(video)!r}")
        if not _has_module("cv2"):
            needing = ", ".join(name for name in WORKLOADS if WORKLOADS[name].needs_video)
            raise ValueError(f"`--workloads` {needing} need OpenCV (pip install 'zeroskip[video]'),"
                             f" got {','.join(workloads)}")
    out = args.out if args.out is not None else DEFAULT_OUT
    existing = next(parent for parent in (out, *out.absolute().parents) if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"`--out` must be a writable directory, got {str(out)!r}")
    options = {"out": out, "workloads": workloads, "threads": args.threads, "video": video,
               "peer": not args.no_peer, "memory": not args.no_memory, "note": args.note}
    if args.repeats is not None:
        options["repeats"] = options["network_repeats"] = args.repeats
    return Settings.quick_variant(**options) if args.quick else Settings(**options)


def main(argv: list[str] | None = None) -> int:
    """``zeroskip bench``: run the suite. Returns the exit status (2 on bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        settings = settings_from_args(args)
    except (_UsageError, ValueError) as error:
        print(f"zeroskip bench: error: {error}", file=sys.stderr)
        return 2
    results = run(settings)
    width = max(len(t["target"]) for t in results["targets"])
    print(f"\ntargets ({'quick run' if settings.quick else 'full run'}, {results['elapsed_s']:.0f} s):")
    for target in results["targets"]:
        print(f"  {target['status']:<8} {target['target']:<{width}}  {target['shown']}")
    print("wrote " + ", ".join(str(settings.out / name) for name in OUTPUT_NAMES if (settings.out / name).exists()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
