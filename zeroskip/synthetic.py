"""A synthetic static-camera clip, generated on the fly, for ``zeroskip demo`` and the tests.

A textured background that never moves, objects of several sizes crossing it at different speeds,
and Gaussian sensor noise on every frame, so that a background subtractor produces masks like those
of a real traffic or pedestrian camera: a few percent of the pixels, in blobs of varied size.
Every frame is a pure function of ``(seed, index)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .masking import _cv2

# (width, height) of the objects as fractions of the frame: pedestrians, cars, a bus.
_OBJECT_SIZES = ((0.02, 0.08), (0.025, 0.09), (0.08, 0.07), (0.1, 0.08), (0.12, 0.1), (0.22, 0.14))
_NOISE_SIGMA = 2.0


@dataclass(frozen=True)
class _Object:
    size: tuple[int, int]
    start: tuple[float, float]
    velocity: tuple[float, float]
    color: tuple[int, int, int]
    stripe: int


class SyntheticClip:
    """A deterministic synthetic video: iterate it for ``(H, W, 3)`` uint8 BGR frames.

    Args:
        width: frame width in pixels (at least 32).
        height: frame height in pixels (at least 32).
        frames: number of frames (at least 1).
        seed: fixes the background, the objects and the noise.

    Example:
        >>> clip = SyntheticClip(640, 360, frames=96, seed=0)
        >>> for frame in clip:  # (360, 640, 3) uint8
        ...     ...
    """

    def __init__(self, width: int = 640, height: int = 360, frames: int = 96, seed: int = 0) -> None:
        for name, value, minimum in (("width", width, 32), ("height", height, 32), ("frames", frames, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")
        self.width, self.height, self.frames, self.seed = width, height, frames, seed
        rng = np.random.default_rng(seed)
        self._background = self._make_background(rng)
        self._objects = [self._make_object(rng, size) for size in _OBJECT_SIZES]

    def _make_background(self, rng: np.random.Generator) -> np.ndarray:
        cv2 = _cv2()
        h, w = self.height, self.width
        # Smooth large-scale texture (pavement, shadows) plus fine grain, over a vertical gradient.
        coarse = cv2.resize(rng.uniform(70, 150, (max(h // 24, 2), max(w // 24, 2))), (w, h))[..., None]
        tint = rng.uniform(-8, 8, (max(h // 48, 2), max(w // 48, 2), 3))
        grain = cv2.GaussianBlur(rng.normal(0, 12, (h, w, 3)), (0, 0), 1.0)
        gradient = np.linspace(-20, 20, h)[:, None, None]
        background = coarse + cv2.resize(tint, (w, h)) + grain + gradient
        # A few static structures with sharp edges (kerbs, buildings, road markings).
        for _ in range(8):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(w // 20, w // 4)), y0 + int(rng.integers(h // 20, h // 4))
            color = rng.uniform(50, 90, 3) + rng.uniform(0, 120)  # muted, mostly grey
            cv2.rectangle(background, (x0, y0), (x1, y1), tuple(float(c) for c in color), -1)
        for y in np.linspace(0.3 * h, 0.9 * h, 4).astype(int):
            cv2.line(background, (0, int(y)), (w, int(y)), (200.0, 200.0, 200.0), max(1, h // 180))
        return np.clip(background, 0, 255).astype(np.uint8)

    def _make_object(self, rng: np.random.Generator, size: tuple[float, float]) -> _Object:
        w, h = self.width, self.height
        ow, oh = max(3, int(size[0] * w)), max(3, int(size[1] * h))
        # Each object crosses the frame about once or twice over the clip, left-right or right-left.
        speed = rng.uniform(1.0, 2.0) * (w + ow) / self.frames
        direction = 1 if rng.random() < 0.5 else -1
        return _Object(
            size=(ow, oh),
            start=(float(rng.uniform(-ow, w)), float(rng.uniform(0.15 * h, 0.95 * h - oh))),
            velocity=(direction * speed, float(rng.uniform(-0.2, 0.2)) * speed),
            color=tuple(int(c) for c in rng.integers(0, 256, 3)),
            stripe=int(rng.integers(3, 9)),
        )

    def __len__(self) -> int:
        return self.frames

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` (``0 <= index < frames``), ``(H, W, 3)`` uint8 BGR."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.frames:
            raise ValueError(f"`index` must be an int in [0, {self.frames}), got {index!r}")
        cv2 = _cv2()
        image = self._background.copy()
        span_x = self.width + 2 * max(o.size[0] for o in self._objects)
        for obj in self._objects:
            ow, oh = obj.size
            # Wrap around horizontally so that objects keep entering and leaving the frame.
            x = int((obj.start[0] + obj.velocity[0] * index + ow) % span_x) - ow
            y = int(np.clip(obj.start[1] + obj.velocity[1] * index, 0, self.height - oh))
            darker = tuple(c // 2 for c in obj.color)
            cv2.rectangle(image, (x, y), (x + ow, y + oh), obj.color, -1)
            for sx in range(x + obj.stripe, x + ow, 2 * obj.stripe):
                cv2.line(image, (sx, y), (sx, y + oh), darker, max(1, obj.stripe // 2))
        noise = np.random.default_rng((self.seed, index)).normal(0, _NOISE_SIGMA, image.shape)
        return np.clip(image + noise, 0, 255).astype(np.uint8)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.frame(index) for index in range(self.frames))

    def write(self, path: str, fps: float = 10.0) -> None:
        """Write the clip to ``path`` as Motion-JPEG AVI.

        Raises:
            OSError: OpenCV cannot open ``path`` for writing.
        """
        cv2 = _cv2()
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (self.width, self.height))
        if not writer.isOpened():
            raise OSError(f"`path` must be a writable .avi path, got {str(path)!r}")
        try:
            for frame in self:
                writer.write(frame)
        finally:
            writer.release()
