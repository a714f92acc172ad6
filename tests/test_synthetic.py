"""The synthetic clip: deterministic, well-formed, and giving the subtractor realistic masks."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2")

from zeroskip.masking import BackgroundMasker  # noqa: E402
from zeroskip.synthetic import SyntheticClip  # noqa: E402


def test_frames_have_the_asked_size_and_count():
    clip = SyntheticClip(120, 80, frames=5, seed=3)
    frames = list(clip)
    assert len(clip) == len(frames) == 5
    assert all(f.shape == (80, 120, 3) and f.dtype == np.uint8 for f in frames)


def test_same_seed_same_clip_other_seed_other_clip():
    first, again, other = (SyntheticClip(96, 64, frames=3, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first.frame(0), other.frame(0))


def test_random_access_matches_iteration():
    clip = SyntheticClip(96, 64, frames=4, seed=1)
    assert np.array_equal(list(clip)[2], clip.frame(2))


def test_objects_move_over_a_static_noisy_background():
    clip = SyntheticClip(160, 96, frames=20, seed=0)
    a, b = clip.frame(0).astype(int), clip.frame(10).astype(int)
    changed = np.abs(a - b).max(axis=2) > 30
    # Objects moved (some pixels change a lot) but most of the frame is the same background...
    assert 0.005 < changed.mean() < 0.5
    # ...seen through sensor noise: small differences almost everywhere else.
    assert (np.abs(a - b)[~changed] > 0).mean() > 0.3


def test_subtractor_masks_a_few_percent_of_the_frame():
    clip = SyntheticClip(320, 180, frames=24, seed=0)
    masker = BackgroundMasker()
    foreground = [float(np.mean(masker.mask(frame) > 0)) for frame in clip]
    # After the first frames, foreground blobs: a few percent, never nothing, never the noise.
    assert all(0.005 < f < 0.25 for f in foreground[4:]), foreground


def test_write_gives_a_readable_avi(tmp_path):
    import cv2

    path = tmp_path / "clip.avi"
    SyntheticClip(96, 64, frames=6, seed=2).write(path)
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 6 and frames[0].shape == (64, 96, 3)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"width": 31}, "width"),
        ({"height": 0}, "height"),
        ({"frames": 0}, "frames"),
        ({"frames": 2.5}, "frames"),
        ({"width": True}, "width"),
        ({"seed": -1}, "seed"),
        ({"seed": "0"}, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}` must"):
        SyntheticClip(**{"width": 64, "height": 48, "frames": 2, **kwargs})


@pytest.mark.parametrize("index", [-1, 3, 1.0])
def test_bad_frame_index(index):
    with pytest.raises(ValueError, match="`index` must"):
        SyntheticClip(64, 48, frames=3).frame(index)


def test_unwritable_path(tmp_path):
    with pytest.raises(OSError, match="`path` must"):
        SyntheticClip(64, 48, frames=2).write(tmp_path / "missing" / "clip.avi")
