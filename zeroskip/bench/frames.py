"""Benchmark inputs: vtest frames (masked as in the original experiment, or raw) and synthetic patterns."""

from __future__ import annotations

import contextlib
import io
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .output import write_atomic


def _cache_path(video: Path, first: int, count: int) -> Path:
    stat = video.stat()
    name = f"{video.stem}-{stat.st_size}-{int(stat.st_mtime)}-{first}-{count}.pt"
    return Path(tempfile.gettempdir()) / "zeroskip-bench" / name


def video_frames(video: Path, count: int) -> Iterator[Any]:
    """The first ``count`` frames of ``video`` (BGR ``uint8`` arrays, as OpenCV decodes them).

    Raises:
        ValueError: the video cannot be read or is shorter than ``count`` frames.
    """
    from ..masking import _cv2

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
    from ..masking import BackgroundMasker, frames_to_tensor

    cache = _cache_path(video, first, count)
    if cache.exists():
        with contextlib.suppress(Exception):  # an unreadable cache is rebuilt below
            return frames_to_tensor(list(torch.load(cache, weights_only=True).numpy()))
    masker = BackgroundMasker()
    # Every frame goes through the subtractor, so that it has learnt the background by ``first``.
    kept = list(itertools.islice((masker(frame) for frame in video_frames(video, first + count)), first, None))
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, _tensor_bytes(torch.stack([torch.from_numpy(frame) for frame in kept])))
    return frames_to_tensor(kept)


def raw_frames(video: Path, count: int, first: int) -> torch.Tensor:
    """Frames ``first .. first + count - 1`` of ``video``, unmasked: float ``(count, 3, H, W)`` RGB in ``[0, 1]``.

    Raises:
        ValueError: the video cannot be read or is shorter than ``first + count`` frames.
    """
    from ..masking import frames_to_tensor

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


