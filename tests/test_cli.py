"""The ``zeroskip`` command: the three subcommands, and one clean line with exit code 2 on bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from conftest import BAD_VIDEO_CASES, CLIP_FRAMES, VTEST, VTEST_ABSENT  # noqa: E402

from zeroskip import cli, machine, video  # noqa: E402

OUTPUTS = ["frames.csv", "report.png", "summary.json"]


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch):
    """A quiet machine: the busy warning (tests/test_machine.py) would add a stderr line when other work
    loads this one."""
    monkeypatch.setattr(machine, "measure_load", lambda: machine.Load(0.0, 2, "test"))


def entry_point() -> list[str]:
    """The installed ``zeroskip`` console script, or the module when it is not installed."""
    script = shutil.which("zeroskip", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "zeroskip.cli"]


def check_outputs(out, frames: int, max_abs_err: float = 1e-5) -> dict:
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    with open(out / "frames.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == video.COLUMNS
    assert sum(int(r["frames"]) for r in rows) == frames
    summary = json.loads((out / "summary.json").read_text())
    assert {"totals", "medians", "speedup", "max_abs_err", "settings", "environment", "source"} <= set(summary)
    assert summary["totals"]["frames"] == frames
    assert summary["max_abs_err"] < max_abs_err and summary["outputs_agree"]
    return summary


def error_line(capsys) -> str:
    """The one stderr line of a failed run."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_video_on_vtest(tmp_path, capsys):
    if not VTEST.is_file():
        pytest.skip(VTEST_ABSENT)
    out = tmp_path / "vtest"
    assert cli.main(["video", str(VTEST), "--max-frames", "6", "--batch-size", "4", "--out", str(out)]) == 0
    summary = check_outputs(out, 6)
    assert summary["source"]["frame_count"] == 795 and summary["source"]["width"] == 768
    assert summary["settings"]["model"] == "stem" and summary["settings"]["batch_size"] == 4
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "6 frames in 2 batches" in printed


def test_video_on_synthetic_clip_through_the_entry_point(tmp_path, clip_path):
    out = tmp_path / "out"
    command = [*entry_point(), "video", str(clip_path), "--batch-size", "5", "--threads", "1", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    check_outputs(out, CLIP_FRAMES)
    assert "speed-up" in result.stdout and "Traceback" not in result.stderr


def test_damaged_file_through_the_entry_point(tmp_path, bad_video):
    # OpenCV's and FFmpeg's own complaints about this file must not reach stderr.
    path = bad_video(tmp_path / "damaged.avi", "truncated")
    out = tmp_path / "out"
    result = subprocess.run(
        [*entry_point(), "video", str(path), "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    expected = f"zeroskip: error: `path` must be a video file OpenCV can decode, got {str(path)!r}"
    assert result.stderr.splitlines() == [expected]
    assert not out.exists()


@pytest.mark.parametrize("model", ["resnet18", "resnet50", "mobilenet_v2", "fcn_resnet50"])
def test_video_runs_whole_networks(model, tmp_path, clip_path, capsys):
    pytest.importorskip("torchvision")
    out = tmp_path / "out"
    argv = ["video", str(clip_path), "--model", model, "--max-frames", "2", "--batch-size", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    # Deep outputs are large: agreement is judged with the tolerance scaled by their magnitude.
    assert check_outputs(out, 2, max_abs_err=float("inf"))["settings"]["model"] == model
    assert f"model {model}," in capsys.readouterr().out


@pytest.mark.parametrize(
    "options, frames", [(["--mode", "rows", "--subtractor", "knn"], 6), (["--max-frames", "3", "--mode", "tiles"], 3)]
)
def test_demo(tmp_path, capsys, options, frames):
    out = tmp_path / "demo"
    argv = ["demo", "--frames", "6", "--size", "96x64", "--batch-size", "4", "--seed", "2", "--out", str(out), *options]
    assert cli.main(argv) == 0
    summary = check_outputs(out, frames)
    assert summary["source"]["synthetic"] == {"width": 96, "height": 64, "frames": 6, "seed": 2}
    assert "speed-up" in capsys.readouterr().out


def test_demo_writes_to_zeroskip_out_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--frames", "2", "--size", "64x48"]) == 0
    check_outputs(tmp_path / "zeroskip-out" / "demo", 2)


def test_partly_decodable_file_runs_and_says_so(tmp_path, clip_path, capsys):
    path = tmp_path / "cut.avi"
    path.write_bytes(clip_path.read_bytes()[: clip_path.stat().st_size // 2])
    assert cli.main(["video", str(path), "--batch-size", "4", "--out", str(tmp_path / "out")]) == 0
    assert f"announces {CLIP_FRAMES} frames but only" in capsys.readouterr().out


def _frames_changing_size(path):
    frames = [np.zeros((96, 128, 3), np.uint8)] * 3 + [np.zeros((72, 128, 3), np.uint8)]
    info = video.VideoInfo(str(path), 128, 96, 10.0, 4)
    return iter(frames), info


_BAD_FILE_MESSAGES = {
    "missing": "`path` must be an existing video file",
    "directory": "(a directory)",
    "empty": "(an empty file)",
    "text": "`path` must be a video file OpenCV can decode",
    "truncated": "`path` must be a video file OpenCV can decode",
}


@pytest.mark.parametrize(
    "case, message",
    [
        *((case, _BAD_FILE_MESSAGES[case]) for case in BAD_VIDEO_CASES),
        ("size_change", "`frames` must all have one size, got 128x96 at frame 0 and 128x72 at frame 3"),
        ("out_is_file", "`out` must be a writable directory"),
        ("out_below_file", "`out` must be a writable directory"),
        ("write_error", "No space left on device"),
    ],
)
def test_bad_input_one_line_exit_2_no_output(case, message, tmp_path, clip_path, bad_video, capsys, monkeypatch):
    path, out = tmp_path / "input.avi", tmp_path / "out"
    path.write_bytes(clip_path.read_bytes())
    if case in BAD_VIDEO_CASES:
        bad_video(path, case)
    elif case == "size_change":
        monkeypatch.setattr(video, "open_video", _frames_changing_size)
    elif case == "out_is_file":
        out.write_text("")
    elif case == "out_below_file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "out"
    elif case == "write_error":
        import zeroskip.report

        def full_disk(*args):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(zeroskip.report, "write_report", full_disk)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert cli.main(["video", str(path), "--batch-size", "4", "--out", str(out)]) == 2
    line = error_line(capsys)
    assert line.startswith("zeroskip: error: ") and message in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_ctrl_c_stops_cleanly(tmp_path, clip_path, capsys, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "measure_batch", interrupted)
    assert cli.main(["video", str(clip_path), "--out", str(tmp_path / "out")]) == 130
    assert error_line(capsys) == "zeroskip: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_disagreement_exits_1_after_writing(tmp_path, clip_path, capsys, monkeypatch):
    monkeypatch.setattr(video, "outputs_agree", lambda actual, expected: False)
    assert cli.main(["video", str(clip_path), "--max-frames", "4", "--batch-size", "2", "--out", str(tmp_path)]) == 1
    assert "differs from dense in batches [0, 1]" in capsys.readouterr().err
    assert not json.loads((tmp_path / "summary.json").read_text())["outputs_agree"]


@pytest.mark.parametrize(
    "options",
    [
        ["--batch-size", "0"], ["--batch-size", "-4"], ["--batch-size", "eight"], ["--batch-size", "2.5"],
        ["--max-frames", "0"], ["--threads", "0"], ["--threads", "two"], ["--mode", "dense"],
        ["--subtractor", "gmg"], ["--model", "vgg"], ["--seed", "-1"], ["--frobnicate"],
    ],
)
def test_bad_options_exit_2_with_usage(options, tmp_path, clip_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["video", str(clip_path), "--out", str(tmp_path / "out"), *options])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: zeroskip" in err and "error:" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", ["96", "96x", "x64", "16x64", "ninety-sixx64"])
def test_bad_demo_size(size, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--size", size])
    assert exit_info.value.code == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["nonsense"], ["video"]])
def test_missing_or_unknown_command(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("demo", "video", "bench"))


def test_bench_forwards_its_arguments(monkeypatch):
    received = []
    fake = types.ModuleType("zeroskip.bench")
    fake.main = lambda argv: received.append(argv) or 3
    monkeypatch.setitem(sys.modules, "zeroskip.bench", fake)
    assert cli.main(["bench", "--quick", "--help", "--batch-size", "4"]) == 3
    assert received == [["--quick", "--help", "--batch-size", "4"]]


def test_bench_without_the_suite(monkeypatch, capsys):
    # None in sys.modules makes the import fail as if zeroskip/bench/ did not exist.
    monkeypatch.setitem(sys.modules, "zeroskip.bench", None)
    assert cli.main(["bench", "--quick"]) == 2
    assert error_line(capsys).startswith("zeroskip: error: the benchmark suite")


def test_many_sources_one_run(tmp_path, clip_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "b.avi").write_bytes(clip_path.read_bytes())
    listing = tmp_path / "cams.txt"
    listing.write_text("# two more\nvideos/b.avi\n" + str(clip_path) + "\n")
    out = tmp_path / "out"
    argv = ["video", str(clip_path), str(videos), str(listing), "--batch-size", "4", "--threads", "1"]
    argv += ["--out", str(out)]
    assert cli.main(argv) == 0
    assert "frames of 4 streams" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["streams"]] == ["clip", "b", "b-2", "clip-2"]
    assert sorted(p.name for p in out.iterdir()) == ["b", "b-2", "clip", "clip-2", "report.png", "summary.json"]
    assert summary["totals"]["frames"] == 4 * CLIP_FRAMES and summary["outputs_agree"]


def test_a_bad_stream_among_good_ones_exits_1(tmp_path, clip_path, bad_video, capsys):
    bad = bad_video(tmp_path / "bad.avi", "truncated")
    out = tmp_path / "out"
    assert cli.main(["video", str(clip_path), str(bad), "--batch-size", "4", "--out", str(out)]) == 1
    assert error_line(capsys) == "zeroskip: error: 1 of 2 streams failed: bad (errors in summary.json)"
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["streams"]] == ["ok", "failed"]


def test_ctrl_c_in_a_many_stream_run(tmp_path, clip_path, capsys, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "run_models", interrupted)
    assert cli.main(["video", str(clip_path), str(clip_path), "--out", str(tmp_path / "out")]) == 130
    assert error_line(capsys) == "zeroskip: interrupted"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "options, message",
    [(["--workers", "2"], "`--workers` needs `--ray`"), (["--ray", "--workers", "0"], None)],
)
def test_bad_ray_options_exit_2(tmp_path, clip_path, capsys, options, message):
    argv = ["video", str(clip_path), str(clip_path), *options, "--out", str(tmp_path / "out")]
    if message is None:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    else:
        assert cli.main(argv) == 2
        assert message in error_line(capsys)
    assert list(tmp_path.iterdir()) == []
