"""W6 (many cameras): its sources, the figures derived from its rows, and its targets."""

from __future__ import annotations

import pytest

pytest.importorskip("cv2")

from conftest import CLIP_FRAMES  # noqa: E402

from zeroskip import streams_bench  # noqa: E402


def test_video_segment_decodes_its_frames(clip_path):
    whole = list(streams_bench.VideoSegment(str(clip_path), 0, CLIP_FRAMES))
    part = list(streams_bench.VideoSegment(str(clip_path), 4, 3))
    assert len(whole) == CLIP_FRAMES and len(part) == 3
    # Re-iterable: a re-run stream (Ray) starts again from its first frame.
    segment = streams_bench.VideoSegment(str(clip_path), CLIP_FRAMES - 2, 5)
    assert len(list(segment)) == len(list(segment)) == 2


def test_sources_alternate_vtest_segments_and_synthetic_clips(clip_path, monkeypatch):
    monkeypatch.setattr(streams_bench, "_synthetic_file", lambda seed, frames: f"syn{seed}.avi")
    sources = streams_bench.w6_sources(clip_path, 4, 10)
    assert [s.name for s in sources] == ["vtest-0", "synthetic-1", "vtest-392", "synthetic-3"]
    assert [s.target.count for s in sources] == [10] * 4
    assert all(s.name.startswith("synthetic") for s in streams_bench.w6_sources(None, 2, 10))


def _row(case, frames_per_s, t_orig=None, t_sparse=None, speedup=None, frames=16, rss=100.0):
    stages = {"decode_s": 1.0, "subtract_s": 2.0, "wait_for_frames_s": 0.5}
    return {"case": case, "frames_per_s": frames_per_s, "steady_frames_per_s": frames_per_s, "t_orig": t_orig,
            "t_sparse": t_sparse, "model_speedup": speedup, "frames": frames, "rss_peak_mb": rss, "wall_s": 3.0,
            "rss_growth_mb": 5.0, "stages": stages, "exact": None if speedup is None else True}


def test_derived_figures_and_targets():
    rows = [
        _row("memory: stem zeroskip, 4 streams", 10, rss=100.0),
        _row("memory: stem zeroskip, 16 streams", 10, rss=160.0),
        _row("pipeline: stem dense, 16 streams, batch 16", 20.0, t_orig=8.0),
        _row("pipeline: stem zeroskip, 16 streams, batch 16", 40.0, t_sparse=2.0),
        _row("pipeline: resnet18 dense, 16 streams, batch 16", 2.0, t_orig=10.0),
        _row("pipeline: resnet18 zeroskip, 16 streams, batch 16", 2.6, t_sparse=7.0),
        _row("model stage: stem, 16 streams, cross-stream batch 16", 30, 4.0, 1.0, 4.0, frames=64),
        _row("model stage: stem, 1 stream, batch 1", 10, 2.0, 1.0, 2.0, frames=8),
        _row("ray: stem zeroskip, 16 streams, 2 workers x 1 threads", 34.0),
    ]
    figures = streams_bench.derived(rows)
    assert figures["pipeline_speedup_stem"] == 2.0 and figures["model_speedup_stem"] == 4.0
    assert figures["pipeline_speedup_resnet18"] == pytest.approx(1.3)
    assert figures["zeroskip_ms_per_frame_batch16"] == pytest.approx(1000 / 64)
    assert figures["ray_vs_process"] == pytest.approx(0.85)
    assert figures["rss_mb_per_stream"] == pytest.approx(5.0)
    section = {"rows": rows, "derived": figures, "notes": []}
    statuses = [t["status"] for t in streams_bench.targets(section, 2.6)]
    assert statuses == ["met", "missed", "met", "missed"]
    assert streams_bench.targets(section, None)[2]["status"] == "n/a"
    lines = streams_bench.streams_lines(section)
    assert len([line for line in lines if line.startswith("| pipeline:")]) == 4
