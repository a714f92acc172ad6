"""Shared fixtures: tolerances, sparse input patterns, masked vtest frames, a synthetic clip and hostile
files made from it, and the dense-reference check.

Every differential comparison goes through the ``conv_check`` fixture, which counts them; the count
is printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import settings

import zeroskip
import zeroskip.engine.cost

VTEST = Path(os.environ.get("ZEROSKIP_VTEST", Path(__file__).resolve().parents[2] / "shared" / "data" / "vtest.avi"))
# OpenCV's sample clip; README "The sample video".
VTEST_URL = "https://github.com/opencv/opencv/raw/master/samples/data/vtest.avi"
VTEST_ABSENT = (
    f"sample video {VTEST} is absent; fetch it with: curl -L --create-dirs -o {VTEST} {VTEST_URL}"
    " (or set ZEROSKIP_VTEST to a copy)"
)
# ZEROSKIP_FUZZ=1 (make fuzz): every pattern in every grid and many more hypothesis examples.
FUZZ = bool(os.environ.get("ZEROSKIP_FUZZ"))
# Frames masked after the MOG subtractor has seen this many frames (it needs a history to work).
_VTEST_FRAMES = (30, 45, 59)

# Two OpenMP threads on a busy machine spin against each other and make tiny convolutions ~30x slower;
# correctness does not depend on the thread count.
torch.set_num_threads(int(os.environ.get("ZEROSKIP_TEST_THREADS", "1")))

settings.register_profile("default", max_examples=200, deadline=None, derandomize=True)
settings.register_profile("fuzz", max_examples=5000, deadline=None)
settings.load_profile("fuzz" if FUZZ else "default")


def _cpu_supports(dtype: torch.dtype) -> bool:
    try:
        F.conv2d(torch.ones(1, 1, 3, 3, dtype=dtype), torch.ones(1, 1, 2, 2, dtype=dtype))
    except RuntimeError:
        return False
    return True


DTYPES = [d for d in (torch.float32, torch.float64, torch.bfloat16, torch.float16) if _cpu_supports(d)]

# torch.testing.assert_close's default tolerances per dtype, spelled out for the allclose fast path. Sparse
# paths run F.conv2d on sub-images (tiles, row bands), where the backend may choose another algorithm and
# summation order than on the whole image; these defaults (the exactness bar) hold for every dtype.
TOLERANCES = {
    torch.float32: {"rtol": 1.3e-6, "atol": 1e-5},
    torch.float64: {"rtol": 1e-7, "atol": 1e-7},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-5},
    torch.float16: {"rtol": 1e-3, "atol": 1e-5},
}

PATTERNS = (
    "zeros",
    "dense",
    "pixel_top_left",
    "pixel_top_right",
    "pixel_bottom_left",
    "pixel_bottom_right",
    "pixel_top",
    "pixel_bottom",
    "pixel_left",
    "pixel_right",
    "pixel_center",
    "row_band",
    "column_band",
    "blobs",
    "scatter",
    "mixed_batch",
)

# The patterns the large parameter grids loop over in the default run; ZEROSKIP_FUZZ=1 gives them all.
CORE_PATTERNS = (
    "zeros", "dense", "pixel_top_left", "pixel_bottom_right", "pixel_right", "row_band", "blobs", "mixed_batch"
)

QUICK_PATTERNS = ("zeros", "pixel_bottom_right", "mixed_batch")


def _pixel_position(name: str, height: int, width: int) -> tuple[int, int]:
    where = name.removeprefix("pixel_")
    row = {"top": 0, "bottom": height - 1}.get(where.split("_")[0], height // 2)
    column = {"left": 0, "right": width - 1}.get(where.split("_")[-1], width // 2)
    return row, column


def _mask(name: str, batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Bool ``(B, 1, H, W)``: which pixels of each image hold non-zero values."""
    mask = torch.zeros(batch, 1, height, width, dtype=torch.bool)
    if name == "dense":
        mask[:] = True
    elif name.startswith("pixel_"):
        row, column = _pixel_position(name, height, width)
        mask[:, :, row, column] = True
    elif name == "row_band":
        top = int(torch.randint(height, (), generator=generator))
        mask[:, :, top : top + max(1, height // 5)] = True
    elif name == "column_band":
        left = int(torch.randint(width, (), generator=generator))
        mask[:, :, :, left : left + max(1, width // 6)] = True
    elif name == "blobs":
        for b in range(batch):
            for _ in range(3):
                r, c = (int(torch.randint(n, (), generator=generator)) for n in (height, width))
                rh, rw = (int(torch.randint(1, max(2, n // 4), (), generator=generator)) for n in (height, width))
                mask[b, 0, max(0, r - rh) : r + rh, max(0, c - rw) : c + rw] = True
    elif name == "scatter":
        mask = torch.rand(batch, 1, height, width, generator=generator) < 0.03
    elif name == "mixed_batch":
        # One image per kind, so that auto sends images of one batch down different paths.
        kinds = ("zeros", "dense", "pixel_bottom_right", "blobs", "row_band")
        for b in range(batch):
            mask[b] = _mask(kinds[b % len(kinds)], 1, height, width, generator)[0]
    elif name != "zeros":
        raise ValueError(f"unknown pattern {name!r}")
    return mask


def make_pattern(
    name: str,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> torch.Tensor:
    """A ``(B, C, H, W)`` input whose non-zero pixels follow the named pattern.

    Active pixels get non-zero values in a random subset of channels (at least one), so the
    activity checks must look at every channel.
    """
    batch, channels, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    mask = _mask(name, batch, height, width, generator)
    values = torch.randn(shape, generator=generator)
    values = torch.where(values == 0, torch.ones(()), values)
    channel_on = torch.rand(shape, generator=generator) < 0.6
    channel_on[:, -1] = True
    return (values * (mask & channel_on)).to(dtype)


@pytest.fixture
def pattern():
    """``pattern(name, shape, dtype=float32, seed=0)``: see :func:`make_pattern`."""
    return make_pattern


@pytest.fixture
def each_pattern():
    """``each_pattern(shape, dtype=float32, seed=0, *, core=False, mode=None)``: ``(name, input)`` per pattern.

    All of :data:`PATTERNS` by default; :data:`CORE_PATTERNS` when ``core``; :data:`QUICK_PATTERNS` for
    ``mode`` "dense" or "auto", which on test-sized images run ``F.conv2d`` (auto finds them too cheap to
    skip), so that the grids spend their time on the sparse paths. ZEROSKIP_FUZZ=1 always gives all.
    """

    def generate(shape, dtype=torch.float32, seed=0, *, core=False, mode=None):
        names = PATTERNS
        if not FUZZ and mode in ("dense", "auto"):
            names = QUICK_PATTERNS
        elif not FUZZ and core:
            names = CORE_PATTERNS
        for name in names:
            yield name, make_pattern(name, shape, dtype, seed)

    return generate


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking ``dtype`` runs for every dtype CPU convolution supports, unless it parametrizes it."""
    markers = metafunc.definition.iter_markers("parametrize")
    names = [marker.args[0] for marker in markers]
    explicit = {n.strip() for name in names for n in (name.split(",") if isinstance(name, str) else name)}
    if "dtype" in metafunc.fixturenames and "dtype" not in explicit:
        metafunc.parametrize("dtype", DTYPES, ids=[str(d).removeprefix("torch.") for d in DTYPES])


def make_weights(
    out_channels: int,
    in_per_group: int,
    kernel: tuple[int, int],
    *,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
    seed: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight ``(C_out, C_in / groups, kH, kW)`` and bias ``(C_out,)`` (or ``None``), scaled like nn.Conv2d's."""
    generator = torch.Generator().manual_seed(seed)
    scale = (in_per_group * kernel[0] * kernel[1]) ** -0.5
    weight = (torch.rand(out_channels, in_per_group, *kernel, generator=generator) * 2 - 1) * scale
    b = (torch.rand(out_channels, generator=generator) * 2 - 1) if bias else None
    return weight.to(dtype), None if b is None else b.to(dtype)


@pytest.fixture(params=["auto", "channels"])
def native_kernel(request, monkeypatch):
    """The native executor's kernel: its own choice per layer (vectors of pixels on most of the small
    test layers), or its kernel of channel vectors forced on every layer, whatever its channels."""
    from zeroskip.engine import native

    if request.param == "channels":
        if native.library() is None:
            pytest.skip("no native executor")
        monkeypatch.setattr(native, "_KERNEL", 1)
    return request.param


@pytest.fixture
def weights():
    """``weights(out_channels, in_per_group, kernel, *, bias=True, dtype=float32, seed=1)``."""
    return make_weights


# "auto_eager" is auto with the cost model's fixed and activity-check overheads removed and small tiles, so
# that the small images of the test grids take the per-image fill/tiles/rows/dense mixes that auto takes
# on large ones (plain auto sends most of them to dense as too cheap to skip).
EAGER_COSTS = dict(
    _NS_FIXED=0.0, _NS_FIXED_NATIVE=0.0, _NS_PER_CHECK=0.0, _NS_PER_COPY=0.03, _NS_PER_CALL=0.0, _NS_PER_WEIGHT_BYTE=0.0
)


@contextlib.contextmanager
def eager_costs():
    """The cost model with :data:`EAGER_COSTS`; costs cached per layer are dropped on the way in and out."""
    zeroskip.engine.cost.image_costs.cache_clear()
    try:
        with mock.patch.multiple(zeroskip.engine.cost, **EAGER_COSTS):
            yield
    finally:
        zeroskip.engine.cost.image_costs.cache_clear()

EAGER_TILE = (4, 5)
TEST_MODES = (*zeroskip.MODES, "auto_eager")

_comparisons = 0
# What ran in the compared calls ("fill", "tiles", "dense+rows", ...), to show the paths were exercised.
_paths: Counter[str] = Counter()


def _sparse_conv(input, weight, bias, *, mode, tile_size, **conv_args) -> tuple[torch.Tensor, str]:
    with zeroskip.profile() as prof:
        if mode == "auto_eager":
            with eager_costs():
                out = zeroskip.conv2d(input, weight, bias, mode="auto", tile_size=tile_size or EAGER_TILE, **conv_args)
        else:
            out = zeroskip.conv2d(input, weight, bias, mode=mode, tile_size=tile_size, **conv_args)
    return out, prof.records[-1].chosen


def assert_same_layout(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same shape, dtype, device and memory format (strides of every dimension longer than 1)."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    assert actual.device == expected.device, f"device {actual.device} != {expected.device}"
    strides = [
        (actual.stride(d), expected.stride(d)) for d in range(actual.dim()) if actual.shape[d] > 1
    ]
    assert all(a == e for a, e in strides), f"strides {actual.stride()} != {expected.stride()}"


def assert_conv_matches(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    mode: str = "auto",
    tile_size=None,
    msg: str = "",
    **conv_args,
) -> torch.Tensor:
    """``zeroskip.conv2d`` against ``F.conv2d`` on the same arguments: values (NaN where dense has
    NaN), shape, dtype and memory format. Returns zeroskip's output."""
    global _comparisons
    expected = F.conv2d(input, weight, bias, **conv_args)
    actual, ran = _sparse_conv(input, weight, bias, mode=mode, tile_size=tile_size, **conv_args)
    context = f"{msg} mode={mode} ran={ran} tile_size={tile_size} args={conv_args} input={tuple(input.shape)}"
    try:
        assert_same_layout(actual, expected)
        tolerance = TOLERANCES[expected.dtype]
        # allclose is the cheap check; assert_close explains a mismatch.
        if not torch.allclose(actual, expected, equal_nan=True, **tolerance):
            torch.testing.assert_close(actual, expected, equal_nan=True, **tolerance)
            raise AssertionError("allclose failed where assert_close passed")
    except AssertionError as error:
        raise AssertionError(f"{context}\n{error}") from None
    _comparisons += 1
    _paths[ran] += 1
    return actual


@pytest.fixture
def conv_check():
    """``conv_check(input, weight, bias=None, *, mode, tile_size=None, msg="", **conv_args)``; ``mode`` is one
    of :data:`TEST_MODES`."""
    return assert_conv_matches


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Under pytest-xdist each worker counts its own comparisons and hands them to the controller.
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["zeroskip_comparisons"] = _comparisons
        output["zeroskip_paths"] = dict(_paths)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    global _comparisons
    output = getattr(node, "workeroutput", {})
    _comparisons += output.get("zeroskip_comparisons", 0)
    _paths.update(output.get("zeroskip_paths", {}))


def pytest_terminal_summary(terminalreporter) -> None:
    if _comparisons:
        terminalreporter.write_line(f"zeroskip: {_comparisons} differential comparisons against F.conv2d")
        paths = ", ".join(f"{path} {count}" for path, count in sorted(_paths.items()))
        terminalreporter.write_line(f"zeroskip: paths that ran: {paths}")


def _masked_vtest(count: int) -> np.ndarray:
    import cv2

    from zeroskip.masking import BackgroundMasker

    capture = cv2.VideoCapture(str(VTEST))
    masker = BackgroundMasker()
    frames = []
    try:
        for index in range(max(_VTEST_FRAMES[:count]) + 1):
            ok, frame = capture.read()
            if not ok:
                pytest.skip(f"could not read frame {index} of {VTEST}")
            masked = masker(frame)
            if index in _VTEST_FRAMES[:count]:
                frames.append(masked)
    finally:
        capture.release()
    return np.stack(frames)


@pytest.fixture(scope="session")
def vtest_frames(request) -> torch.Tensor:
    """A few masked vtest frames, ``(3, 3, 576, 768)`` float32 in [0, 1], cached across runs."""
    if not VTEST.is_file():
        pytest.skip(VTEST_ABSENT)
    pytest.importorskip("cv2")
    from zeroskip.masking import frames_to_tensor

    cache = getattr(request.config, "cache", None)
    path = None if cache is None else cache.mkdir("zeroskip") / f"vtest_masked_{'_'.join(map(str, _VTEST_FRAMES))}.npy"
    if path is not None and path.is_file():
        frames = np.load(path)
    else:
        frames = _masked_vtest(len(_VTEST_FRAMES))
        if path is not None:
            np.save(path, frames)
    return frames_to_tensor(list(frames))


CLIP_FRAMES = 12


def failing_write(path: Path, *args: object) -> None:
    """A report writer that leaves a partial file and fails, as on a disk error."""
    path.write_bytes(b"partial")
    raise OSError(5, "Input/output error")

# Files that are not a decodable video: ``bad_video(path, case)`` makes each.
BAD_VIDEO_CASES = ("missing", "directory", "empty", "text", "truncated")


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory) -> Path:
    """A :data:`CLIP_FRAMES`-frame synthetic 128x96 clip as MJPG AVI."""
    pytest.importorskip("cv2")
    from zeroskip.synthetic import SyntheticClip

    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    SyntheticClip(128, 96, frames=CLIP_FRAMES, seed=0).write(path)
    return path


@pytest.fixture
def bad_video(clip_path):
    """``bad_video(path, case)``: make ``path`` one of :data:`BAD_VIDEO_CASES` (a missing file, a directory,
    an empty file, a text file, or the clip cut after its first 1000 bytes, inside the header) and return it."""

    def make(path: Path, case: str) -> Path:
        if path.is_dir():
            path.rmdir()
        elif path.exists():
            path.unlink()
        if case == "directory":
            path.mkdir()
        elif case == "empty":
            path.write_bytes(b"")
        elif case == "text":
            path.write_text("frame,value\n1,2\n" * 100)
        elif case == "truncated":
            path.write_bytes(clip_path.read_bytes()[:1000])
        elif case != "missing":
            raise ValueError(f"`case` must be one of {', '.join(BAD_VIDEO_CASES)}, got {case!r}")
        return path

    return make
