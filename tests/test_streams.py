"""Many streams in one run: per-stream state, cross-stream batches, faults, and all-or-nothing outputs."""

from __future__ import annotations

import csv
import json
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from conftest import CLIP_FRAMES, failing_write  # noqa: E402

from zeroskip import streams, video  # noqa: E402
from zeroskip.masking import BackgroundMasker, frames_to_tensor  # noqa: E402
from zeroskip.sources import Source  # noqa: E402
from zeroskip.synthetic import SyntheticClip  # noqa: E402


def clip(frames: int, seed: int) -> SyntheticClip:
    return SyntheticClip(96, 64, frames=frames, seed=seed)


def table(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def files(directory) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_many_files_one_run(tmp_path, clip_path):
    out = tmp_path / "out"
    summary = streams.run([clip_path, clip_path, Source("syn", clip(5, 1), "synthetic")],
                          video.Settings(batch_size=4), out)
    assert files(out) == [
        "clip", "clip-2", "clip-2/frames.csv", "clip/frames.csv", "report.png", "summary.json", "syn", "syn/frames.csv",
    ]
    written = json.loads((out / "summary.json").read_text())
    assert written["totals"]["frames"] == 2 * CLIP_FRAMES + 5 and written["totals"]["failed_streams"] == 0
    assert written["outputs_agree"] and written["max_abs_err"] < 1e-5
    for stream, frames in zip(written["streams"], (CLIP_FRAMES, CLIP_FRAMES, 5)):
        rows = table(out / stream["name"] / "frames.csv")
        assert tuple(rows[0]) == video.COLUMNS
        # Every frame exactly once, batches in order.
        assert sum(int(r["frames"]) for r in rows) == stream["frames"] == frames
        assert [int(r["batch"]) for r in rows] == sorted({int(r["batch"]) for r in rows})
        assert stream["status"] == "ok" and stream["error"] is None
        assert (stream["frame_width"], stream["frame_height"]) == ((128, 96) if stream["name"] != "syn" else (96, 64))
    assert sum(b["frames"] for b in written["batches"]) == written["totals"]["frames"]
    assert all(b["frames"] <= 4 for b in written["batches"])
    # Frames of several streams share batches.
    assert max(b["streams"] for b in written["batches"]) > 1
    assert set(written["stages"]) >= {"decode_s", "subtract_s", "model_dense_s", "model_zeroskip_s", "write_s"}
    assert summary["outputs"]["summary.json"] == str(out / "summary.json")
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG")


def test_interleaved_streams_equal_single_runs():
    """Masks and outputs of streams batched together equal those of each stream run alone, in order."""
    clips = {"a": clip(9, 1), "b": clip(6, 2), "c": clip(7, 3)}
    seen: dict[str, list] = {name: [] for name in clips}

    def on_frame(name, index, masked, outputs):
        seen[name].append((index, masked, outputs[0]))

    settings = video.Settings(batch_size=4, subtractor="mog2")
    summary = streams.run([Source(n, c, n) for n, c in clips.items()], settings, None, on_frame=on_frame)
    assert summary["totals"]["frames"] == 22 and summary["outputs"] == {}
    dense = video.build_model("stem")
    for name, frames in clips.items():
        masker = BackgroundMasker("mog2")
        assert [index for index, _, _ in seen[name]] == list(range(len(frames)))
        for (_, masked, output), frame in zip(seen[name], frames):
            alone = masker(frame)
            np.testing.assert_array_equal(masked, alone)
            with torch.inference_mode():
                torch.testing.assert_close(output, dense(frames_to_tensor([alone]))[0])


class Breaks:
    """A source that breaks after ``good`` frames."""

    def __init__(self, good: int) -> None:
        self.good = good

    def __iter__(self):
        yield from list(clip(self.good, 4))
        raise OSError(5, "Input/output error")


def test_bad_sources_fail_alone(tmp_path, clip_path, bad_video):
    bad = bad_video(tmp_path / "bad.avi", "truncated")
    out = tmp_path / "out"
    summary = streams.run(
        [clip_path, bad, tmp_path / "missing.avi", Source("breaks", Breaks(3), "breaks"),
         Source("sizes", [np.zeros((64, 96, 3), np.uint8), np.zeros((32, 96, 3), np.uint8)], "sizes")],
        video.Settings(batch_size=4), out,
    )
    by_name = {s["name"]: s for s in summary["streams"]}
    assert by_name["clip"]["status"] == "ok" and by_name["clip"]["frames"] == CLIP_FRAMES
    assert "OpenCV can decode" in by_name["bad"]["error"]
    assert "existing video file" in by_name["missing"]["error"]
    assert by_name["breaks"]["error"] == "[Errno 5] Input/output error" and by_name["breaks"]["frames"] == 3
    assert "one size" in by_name["sizes"]["error"] and by_name["sizes"]["frames"] == 1
    assert summary["totals"]["failed_streams"] == 4
    # The frames a broken stream gave before it broke are in its table.
    assert sum(int(r["frames"]) for r in table(out / "breaks" / "frames.csv")) == 3
    assert json.loads((out / "summary.json").read_text())["streams"][1]["status"] == "failed"


class Stalls:
    """Two frames, then nothing until ``resume`` is set."""

    def __init__(self, resume: threading.Event) -> None:
        self.resume = resume

    def __iter__(self):
        frames = list(clip(3, 5))
        yield from frames[:2]
        assert self.resume.wait(60)
        yield frames[2]


@pytest.mark.timeout(120)
def test_a_stalled_stream_does_not_hold_the_others():
    resume = threading.Event()
    done = []

    def on_frame(name, index, masked, outputs):
        done.append(name)
        if name == "moving" and index == 7:
            resume.set()  # only reached if the moving stream's frames went through

    sources = [Source("stalled", Stalls(resume), "stalled"), Source("moving", clip(8, 6), "moving")]
    summary = streams.run(sources, video.Settings(batch_size=4), None, on_frame=on_frame, max_wait=0.05)
    assert done.count("moving") == 8 and done.count("stalled") == 3 and done[-1] == "stalled"
    assert summary["totals"]["failed_streams"] == 0


@pytest.mark.parametrize("models", ["zeroskip", "dense"])
def test_one_model_only(tmp_path, models):
    summary = streams.run([Source("a", clip(4, 1), "a")], video.Settings(batch_size=2), tmp_path, models=models)
    ran, absent = ("t_sparse", "t_orig") if models == "zeroskip" else ("t_orig", "t_sparse")
    assert summary["totals"][ran] > 0 and summary["totals"][absent] is None
    assert summary["speedup"] is None and summary["max_abs_err"] is None
    json.loads((tmp_path / "summary.json").read_text())  # strict JSON: no NaN


def test_max_frames_is_per_stream():
    summary = streams.run([Source(n, clip(6, 1), n) for n in "ab"], video.Settings(batch_size=3, max_frames=4), None)
    assert [s["frames"] for s in summary["streams"]] == [4, 4]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch, error):
    (tmp_path / "notes.txt").write_text("mine")
    calls = []
    real = video.run_models

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return real(*args)

    monkeypatch.setattr(video, "run_models", failing)
    with pytest.raises(type(error)):
        streams.run([Source(n, clip(6, 1), n) for n in "ab"], video.Settings(batch_size=2), tmp_path / "out")
    assert files(tmp_path) == ["notes.txt"]


def test_report_failure_leaves_nothing(tmp_path, monkeypatch):
    import zeroskip.report

    monkeypatch.setattr(zeroskip.report, "write_streams_report", failing_write)
    with pytest.raises(OSError):
        streams.run([Source(n, clip(2, 1), n) for n in "ab"], video.Settings(batch_size=2), tmp_path / "out")
    assert files(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"models": "neither"}, "`models` must be one of"), ({"prefetch_threads": 0}, "`prefetch_threads` must"),
        ({"max_wait": -1}, "`max_wait` must"), ({"workers": 0}, "`workers` must"),
        ({"sources": []}, "`sources` must be a non-empty list"),
        ({"ray": "local", "on_frame": print}, "`on_frame` must be None under Ray"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    kwargs = {"sources": [Source("a", clip(2, 1), "a")], **kwargs}
    with pytest.raises(ValueError, match=message):
        streams.run(settings=video.Settings(), out=tmp_path / "out", **kwargs)
    assert files(tmp_path) == []


def test_frames_to_tensor_into_memory_equals_a_new_tensor():
    frames = list(clip(3, 7))
    expected = torch.from_numpy(np.ascontiguousarray(np.stack(frames)[..., ::-1])).permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(frames_to_tensor(frames), expected)
    memory = torch.full((5, 3, *frames[0].shape[:2]), float("nan"))
    written = frames_to_tensor(frames, memory)
    assert torch.equal(written, expected) and written.data_ptr() == memory.data_ptr()


class Returns(torch.nn.Module):
    """A model whose output is its input."""

    def forward(self, x):
        return x


def test_outputs_that_are_the_input_are_not_overwritten():
    kept = []
    sources = [Source(n, clip(4, k), n) for k, n in enumerate("ab")]
    events = streams.process(sources, video.Settings(batch_size=2), None, Returns(),
                             on_frame=lambda name, index, masked, outputs: kept.append((masked, outputs[0])))
    assert isinstance(list(events)[-1], streams.EngineDone) and len(kept) == 8
    for masked, output in kept:
        torch.testing.assert_close(output, frames_to_tensor([masked])[0], rtol=0, atol=0)


@pytest.mark.timeout(60)
def test_model_calls_and_subtractions_share_the_cores():
    cores = streams._Cores(2)
    order = []
    with cores.subtraction(), cores.subtraction():
        def call():
            with cores.model(4):  # more threads than cores: holds both
                order.append("model")

        def subtract():
            with cores.subtraction():
                order.append("subtraction")

        model = threading.Thread(target=call)
        model.start()
        while not cores._model_waits:  # waits for both subtractions to end
            model.join(0.01)
        later = threading.Thread(target=subtract)
        later.start()
        later.join(0.2)
        assert order == [] and later.is_alive()
    model.join(10)
    later.join(10)
    # The waiting call went first; the subtraction that came after it waited for it.
    assert order == ["model", "subtraction"]
