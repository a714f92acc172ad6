"""Sources of a many-stream run: files, directories, list files, camera indices and URLs, with safe unique names."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2")

from conftest import CLIP_FRAMES  # noqa: E402

from zeroskip import sources, video  # noqa: E402


def test_files_directories_and_list_files(tmp_path, clip_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("b.avi", "a.MP4", "notes.txt", "c.avi"):
        (videos / name).write_bytes(clip_path.read_bytes())
    (videos / "sub").mkdir()
    listing = tmp_path / "cams.txt"
    listing.write_text("# cameras\nvideos/c.avi  # relative to the list\n\n0\nrtsp://10.0.0.7:554/live/1\n")
    resolved = sources.resolve([str(clip_path), videos, str(listing), 3])
    assert [s.target for s in resolved] == [
        str(clip_path), str(videos / "a.MP4"), str(videos / "b.avi"), str(videos / "c.avi"), str(videos / "c.avi"),
        0, "rtsp://10.0.0.7:554/live/1", 3,
    ]
    assert [s.name for s in resolved] == [
        "clip", "a", "b", "c", "c-2", "camera-0", "10.0.0.7_live_1", "camera-3",
    ]


@pytest.mark.parametrize(
    "bases, names",
    [
        (["../../etc/passwd", ".hidden", "", "a b/c"], ["etc_passwd", "hidden", "stream", "a_b_c"]),
        (["Cam", "cam", "CAM"], ["Cam", "cam-2", "CAM-3"]),
        (["summary.json", "report.png"], ["summary.json-2", "report.png-2"]),
        (["x" * 100, "x" * 100], ["x" * 64, "x" * 62 + "-2"]),
    ],
)
def test_names_are_safe_and_unique(bases, names):
    assert sources.unique_names(bases) == names


def test_a_missing_file_resolves_and_fails_when_opened(tmp_path):
    (source,) = sources.resolve([str(tmp_path / "gone.avi")])
    with pytest.raises(ValueError, match="`path` must be an existing video file"):
        source.open()


def test_urls_and_cameras_go_to_opencv_as_they_are(monkeypatch):
    opened = []
    monkeypatch.setattr(video, "open_capture", lambda target, text, name: opened.append((target, name)) or "ok")
    for source in sources.resolve(["rtsp://cam.local/stream", "2"]):
        assert source.open() == "ok"
    assert opened == [("rtsp://cam.local/stream", "source"), (2, "source")]


def test_an_iterable_source_opens_to_its_frames():
    frames = [np.zeros((8, 8, 3), np.uint8)] * 2
    iterator, info = sources.Source("s", frames, "frames").open()
    assert list(iterator) == frames and info is None


def test_a_file_source_opens(clip_path):
    iterator, info = sources.resolve([clip_path])[0].open()
    assert len(list(iterator)) == info.frame_count == CLIP_FRAMES


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: (p / "empty").mkdir() or [p / "empty"], r"\(a directory\) without a video"),
        (lambda p: (p / "l.txt").write_text("# nothing\n\n") and [p / "l.txt"], "name at least one source"),
        (lambda p: (p / "l.txt").write_text("m.list\n") + (p / "m.list").write_text("x.avi") and [p / "l.txt"],
         "list files must list videos"),
        (lambda p: (p / "l.txt").write_bytes(b"\xff\xfe\x00") and [p / "l.txt"], "readable text"),
        (lambda p: [], "non-empty list"),
        (lambda p: "clip.avi", "non-empty list"),
    ],
)
def test_bad_source_lists(tmp_path, make, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        sources.resolve(make(tmp_path))


def test_bad_source_types():
    with pytest.raises(TypeError, match="`sources` must hold paths"):
        sources.resolve([1.5])
