"""W6 (many cameras): its sources, its comparison rows, its table and its targets."""

from __future__ import annotations

import pytest

pytest.importorskip("cv2")

from conftest import CLIP_FRAMES  # noqa: E402

from zeroskip.bench import streams as w6_streams  # noqa: E402
from zeroskip.bench.targets import evaluate_targets  # noqa: E402


def test_video_segment_decodes_its_frames(clip_path):
    whole = list(w6_streams.VideoSegment(str(clip_path), 0, CLIP_FRAMES))
    part = list(w6_streams.VideoSegment(str(clip_path), 4, 3))
    assert len(whole) == CLIP_FRAMES and len(part) == 3
    # Re-iterable: a re-run stream (Ray) starts again from its first frame.
    segment = w6_streams.VideoSegment(str(clip_path), CLIP_FRAMES - 2, 5)
    assert len(list(segment)) == len(list(segment)) == 2


def test_sources_alternate_vtest_segments_and_synthetic_clips(clip_path, monkeypatch):
    monkeypatch.setattr(w6_streams, "synthetic_file", lambda seed, frames, size: f"syn{seed}-{size[1]}x{size[0]}.avi")
    sources = w6_streams.camera_sources(clip_path, 4, 10, (96, 128))
    assert [s.name for s in sources] == ["vtest-0", "synthetic-1", "vtest-392", "synthetic-3"]
    assert [s.target.count for s in sources] == [10] * 4 and sources[1].target.path == "syn1-128x96.avi"
    assert all(s.name.startswith("synthetic") for s in w6_streams.camera_sources(None, 2, 10, (96, 128)))


def test_synthetic_files_are_written_once(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = w6_streams.synthetic_file(3, 2, (32, 48))
    assert len(list(w6_streams.VideoSegment(path, 0, 2))) == 2
    assert w6_streams.synthetic_file(3, 2, (32, 48)) == path
    assert [p.name for p in (tmp_path / "zeroskip-bench").iterdir()] == ["synthetic-48x32-2-3.avi"]


def _summary(frames_per_s, t_orig=None, t_sparse=None, agree=True):
    totals = {"frames": 32, "frames_per_s": frames_per_s, "wall_s": 2.0, "t_orig": t_orig, "t_sparse": t_sparse,
              "failed_streams": 0}
    stages = {"decode_s": 1.0, "subtract_s": 2.0, "wait_for_frames_s": 0.5}
    speedup = t_orig / t_sparse if t_orig and t_sparse else None
    return {"totals": totals, "stages": stages, "steady_frames_per_s": frames_per_s, "speedup": speedup,
            "outputs_agree": agree, "max_abs_err": 0.0}


def _rows(threads: int = 2) -> list[dict]:
    tag = {"threads": threads, "heap": "default", "load": "quiet"}
    return [
        {**w6_streams.pipeline_row("W6 pipeline stem, 16 streams, batch 16", _summary(20.0, t_orig=8.0),
                                   _summary(40.0, t_sparse=2.0), rss_mb_per_stream=70.0), **tag},
        {**w6_streams.pipeline_row("W6 pipeline resnet18, 16 streams, batch 16", _summary(2.0, t_orig=10.0),
                                   _summary(2.6, t_sparse=7.0)), **tag},
        {**w6_streams.model_row("W6 model stage stem, 16 streams, cross-stream batch 16", _summary(30, 4.0, 1.0)),
         **tag},
        {**w6_streams.model_row("W6 model stage stem, 1 stream, batch 1", _summary(10, 2.0, 1.0)), **tag},
    ]


def test_rows_and_table():
    rows = _rows()
    assert [r["speedup"] for r in rows] == [2.0, pytest.approx(1.3), 4.0, 2.0]
    assert rows[0]["model_speedup"] == 4.0 and rows[0]["exact"] is None and rows[2]["exact"] is True
    assert rows[2]["ms_per_frame"] == pytest.approx(1000 / 32)
    lines = w6_streams.streams_table(rows)
    assert len(lines) == 2 + len(rows)
    assert "RSS 70 MB per stream" in lines[2] and "dense 20.0 (20.0); zeroskip 40.0 (40.0)" in lines[2]


def test_targets():
    w1 = {"case": "W1 batch 16", "batch": 16, "speedup": 2.5, "efficiency": 0.5, "threads": 2, "heap": "default",
          "load": "quiet", "exact": True}
    entries = evaluate_targets({"W1": {"rows": [w1]}, "W6": {"rows": _rows()}}, 2)
    status = {e["target"].split(" >=")[0]: e["status"] for e in entries if e["target"].startswith("W6")}
    assert status == {
        "W6 whole-pipeline steady frames/s, stem, zeroskip over dense": "PASS",
        "W6 whole-pipeline steady frames/s, resnet18, zeroskip over dense": "FAIL",
        "W6 steady frames/s, 2 Ray workers over one process with the same threads": "NOT RUN",
        "W6 model-stage speed-up, 16 streams at cross-stream batch 16, over W1 batch 16's": "PASS",
    }
    # Pipeline rows compare nothing: exactness counts the two model-stage rows and W1's.
    (exact,) = [e for e in entries if e["target"].startswith("every zeroskip output")]
    assert exact["shown"] == "3/3 cases"
