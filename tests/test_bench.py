"""Smoke tests of the benchmark suite on tiny workloads: the pipeline runs and writes its files.

No timing is asserted: the machine is shared and the sizes are far too small to mean anything.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from zeroskip import bench


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("cv2")
    from zeroskip.synthetic import SyntheticClip

    path = tmp_path_factory.mktemp("video") / "tiny.avi"
    SyntheticClip(96, 64, frames=14, seed=1).write(str(path))
    return path


def _tiny_settings(out: Path, video: Path | None, workloads: tuple[str, ...]) -> bench.Settings:
    return bench.Settings.quick_variant(
        out=out, workloads=workloads, video=video, first_frame=10, frames=4, hd_frames=2, batches=(1, 2), threads=1,
        hd_size=(72, 128), sweep_size=(48, 64), densities=(0.0, 0.05, 1.0), repeats=1, min_block_s=0.0,
        peer=False,
    )


def test_run_writes_results_for_every_workload(tiny_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the masked-frame cache
    out = tmp_path / "results"
    results = bench.run(_tiny_settings(out, tiny_video, tuple(bench.WORKLOADS)))

    assert sorted(p.name for p in out.iterdir()) == sorted(bench.OUTPUT_NAMES)
    assert json.loads((out / "results.json").read_text())["metadata"]["quick"] is True
    assert set(results["sections"]) == set(bench.WORKLOADS)
    for row in results["sections"]["W1"]["rows"] + results["sections"]["W4"]["rows"]:
        assert row["exact"], row["mismatch"]
        assert 0.0 <= row["active_fraction"] <= 1.0
        assert row["dense_ms"] > 0 and row["zeroskip_ms"] > 0
        assert row["memory_ratio"] is None or row["memory_ratio"] > 0
    assert [r["batch"] for r in results["sections"]["W2"]["rows"]] == [1, 2]
    assert all(r["exact"] for r in results["sections"]["W3"]["rows"])
    assert {t["status"] for t in results["targets"]} <= {"PASS", "FAIL", "NOT RUN"}
    steps = results["sections"]["W1"]["breakdown"]["steps"]
    assert {s["step"] for s in steps} <= set(bench.BREAKDOWN_STEPS)
    assert sum(s["share"] for s in steps) == pytest.approx(1.0)
    markdown = (out / "results.md").read_text()
    assert "## Targets" in markdown and "W1 breakdown" in markdown


def test_sweep_alone_needs_no_video(tmp_path: Path):
    results = bench.run(_tiny_settings(tmp_path, None, ("W3",)))
    cases = [r["case"] for r in results["sections"]["W3"]["rows"]]
    assert cases == ["blobs 0.0%", "blobs 5.0%", "blobs 100.0%", "bands 10.0%"]
    targets = {t["target"]: t["status"] for t in results["targets"]}
    assert targets["W1 batch 1 speed-up >= 5x"] == "NOT RUN"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "0"], "`--threads` must be a positive int, got '0'"),
        (["--repeats", "x"], "`--repeats` must be a positive int, got 'x'"),
        (["--workloads", "W1,W9"], "`--workloads` must be a comma list of W1, W2, W3, W4"),
        (["--workloads", "W1", "--video", "missing.avi"], "`--video` must be an existing file"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--workloads", "W3", "--out", "/proc/version/x"], "`--out` must be a writable directory"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_no_output(argv, message, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert bench.main(["--out", str(out), *argv]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error
    assert not out.exists()


def test_measure_times_every_function_in_every_round():
    calls = []
    timings = bench.measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, 0.0)
    assert {name: t.blocks for name, t in timings.items()} == {"a": 3, "b": 3}
    # Two warm-up calls each, then the rounds alternate with the order rotating.
    assert calls == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "b"]
    assert all(t.low <= t.q1 <= t.median <= t.q3 <= t.high for t in timings.values())


@pytest.mark.parametrize("kind, density", [("blobs", 0.0), ("blobs", 0.013), ("blobs", 1.0), ("dots", 0.01)])
def test_synthetic_frames_have_the_asked_pixel_density(kind, density):
    frame = bench.pattern_frame((48, 64), kind, density, torch.Generator().manual_seed(0))
    assert frame.shape == (1, 3, 48, 64)
    assert int(frame.ne(0).any(1).sum()) == round(density * 48 * 64)


def test_row_bands_cover_whole_rows():
    frame = bench.pattern_frame((64, 40), "bands", 0.25, torch.Generator().manual_seed(0))
    rows = frame.ne(0).any(1)[0]
    assert rows.all(1).sum() == 16 and (rows.any(1) == rows.all(1)).all()


@pytest.mark.parametrize(
    "operator, functions, step",
    [
        ("aten::conv2d", ["run_tiles", "_forward"], "convolution"),
        ("aten::amax", ["_reduce_blocks", "cell_activity", "active_tiles"], "activity check"),
        ("aten::cumsum", ["window_any", "active_tiles"], "planning"),
        ("aten::copy_", ["_pad_band", "run_tiles", "_forward"], "gather"),
        ("aten::copy_", ["run_tiles", "_forward"], "scatter"),
        ("aten::copy_", ["run_rows", "_forward"], "scatter"),
        ("aten::index_put_", ["run_tiles"], "scatter"),
        ("aten::index", ["run_tiles"], "gather"),
        ("aten::zero_", ["_new_output"], "fill"),
        ("aten::empty_strided", ["empty_strided", "_new_output"], "allocation"),
        ("aten::nonzero", ["run_tiles"], "planning"),
    ],
)
def test_operator_steps(operator, functions, step):
    assert bench._operator_step(operator, functions) == step


@pytest.mark.parametrize(
    "frame, inside",
    [
        ("/src/zeroskip/_tiles.py(120)", True),
        ("C:\\src\\zeroskip\\conv.py(7)", True),
        ("/venv/bin/zeroskip(8)", False),  # the console script
        ("/src/zeroskip/bench.py(300)", False),  # the suite itself
        ("/src/zeroskip_extra/conv.py(7)", False),
    ],
)
def test_engine_frames_are_recognised(frame, inside):
    assert bool(bench._PACKAGE_FILE.search(frame)) is inside


def test_busy_machine_is_flagged():
    quiet = {"cpu_affinity": 2, "cpu_count": 2, "load_average_start": (1.5, 1, 1), "load_average_end": (1.9, 1, 1)}
    assert bench._busy_note(quiet) == ""
    assert "busy" in bench._busy_note({**quiet, "load_average_end": (5.2, 4, 3)})
