"""The video pipeline: models, settings, decoding, the run and its all-or-nothing outputs."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("cv2")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from conftest import BAD_VIDEO_CASES, CLIP_FRAMES, failing_write  # noqa: E402

from zeroskip import CallRecord, SparseConv2d, sparsify_, video  # noqa: E402
from zeroskip.synthetic import SyntheticClip  # noqa: E402

SUMMARY_KEYS = {
    "source", "settings", "totals", "medians", "speedup", "max_abs_err", "outputs_agree", "mismatched_batches",
    "environment", "outputs",
}


def small_clip(frames: int = 10):
    return list(SyntheticClip(128, 96, frames=frames, seed=0))


def read_rows(out):
    with open(out / "frames.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_stem_is_the_original_layer_seeded():
    model = video.build_model("stem", seed=3)
    assert isinstance(model, nn.Conv2d) and not model.training
    assert (model.in_channels, model.out_channels, model.kernel_size, model.stride, model.padding, model.bias) == (
        3, 64, (7, 7), (2, 2), (3, 3), None
    )
    assert torch.equal(model.weight, video.build_model("stem", seed=3).weight)
    assert not torch.equal(model.weight, video.build_model("stem", seed=4).weight)


def test_building_a_model_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    video.build_model("stem", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_resnet18_builds_without_downloads():
    pytest.importorskip("torchvision")
    model = video.build_model("resnet18")
    assert not model.training and sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 20


def test_unknown_model():
    with pytest.raises(ValueError, match="must be one of .*got 'vgg'"):
        video.build_model("vgg")


@pytest.mark.parametrize(
    "field, value",
    [
        ("batch_size", 0), ("batch_size", -2), ("batch_size", "8"), ("batch_size", True), ("batch_size", 2.0),
        ("max_frames", 0), ("threads", 0), ("subtractor", "gmg"), ("model", "vgg"), ("mode", "dense"),
    ],
)
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}` must .*got {value!r}"):
        video.Settings(**{field: value})


def test_open_video_reads_every_frame(clip_path):
    frames, info = video.open_video(clip_path)
    frames = list(frames)
    assert (info.width, info.height, info.frame_count) == (128, 96, CLIP_FRAMES)
    assert len(frames) == CLIP_FRAMES and frames[0].shape == (96, 128, 3)


@pytest.mark.parametrize("case", BAD_VIDEO_CASES)
def test_open_video_rejects_bad_files(case, tmp_path, bad_video):
    with pytest.raises(ValueError, match="`path` must"):
        video.open_video(bad_video(tmp_path / "bad.avi", case))


def test_run_writes_the_three_files(tmp_path):
    out = tmp_path / "out"
    summary = video.run(small_clip(10), video.Settings(batch_size=4), out, source={"name": "clip"}, total=10)
    assert sorted(p.name for p in out.iterdir()) == ["frames.csv", "report.png", "summary.json"]
    rows = read_rows(out)
    assert tuple(rows[0]) == video.COLUMNS
    # The last, partial batch is processed.
    assert [int(r["frames"]) for r in rows] == [4, 4, 2]
    assert [int(r["batch"]) for r in rows] == [0, 1, 2]
    assert all(float(r["max_abs_err"]) < 1e-5 for r in rows)
    assert all(0 <= float(r["active_fraction"]) <= 1 for r in rows)
    assert all(0 <= float(r["sparsity_before"]) <= 100 for r in rows)
    written = json.loads((out / "summary.json").read_text())
    assert set(written) == SUMMARY_KEYS - {"outputs"}
    assert set(summary) == SUMMARY_KEYS
    assert written["totals"]["frames"] == 10 and written["totals"]["batches"] == 3
    assert written["outputs_agree"] and written["max_abs_err"] < 1e-5
    assert written["source"] == {"name": "clip", "frame_width": 128, "frame_height": 96}
    assert written["speedup"] == pytest.approx(written["totals"]["t_orig"] / written["totals"]["t_sparse"])
    assert {"torch", "zeroskip", "cpu", "platform", "torch_threads", "load_average", "git_commit"} <= set(
        written["environment"]
    )
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG")
    assert not list(out.glob(".*"))


@pytest.mark.parametrize("frames, batch_size, max_frames, expected", [(5, 16, None, [5]), (10, 3, 7, [3, 3, 1])])
def test_short_clips_and_max_frames(tmp_path, frames, batch_size, max_frames, expected):
    settings = video.Settings(batch_size=batch_size, max_frames=max_frames)
    summary = video.run(small_clip(frames), settings, tmp_path, total=frames)
    assert [int(r["frames"]) for r in read_rows(tmp_path)] == expected
    assert summary["totals"]["frames"] == sum(expected)


@pytest.mark.parametrize("mode", ["rows", "tiles"])
def test_forced_modes_are_recorded(tmp_path, mode):
    video.run(small_clip(6), video.Settings(batch_size=3, mode=mode), tmp_path)
    assert {r["mode"] for r in read_rows(tmp_path)} <= {mode, "fill", f"fill+{mode}"}


def test_threads_are_restored(tmp_path):
    before = torch.get_num_threads()
    summary = video.run(small_clip(2), video.Settings(batch_size=2, threads=2), tmp_path)
    assert summary["environment"]["torch_threads"] == 2
    assert torch.get_num_threads() == before


def _files(directory):
    return sorted(p.name for p in directory.rglob("*"))


@pytest.mark.parametrize(
    "frames, message",
    [
        ([], "at least one frame"),
        ([np.zeros((96, 128, 3), np.uint8)] * 3 + [np.zeros((90, 128, 3), np.uint8)], "one size"),
        ([np.zeros((96, 128), np.uint8)], "uint8 BGR"),
        ([np.zeros((96, 128, 3), np.float32)], "uint8 BGR"),
    ],
)
def test_bad_frames_leave_no_output(tmp_path, frames, message):
    out = tmp_path / "new" / "out"
    with pytest.raises(ValueError, match=message):
        video.run(frames, video.Settings(batch_size=2), out)
    # Directories made for the run are removed again.
    assert _files(tmp_path) == []


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_midway_leaves_previous_contents_alone(tmp_path, monkeypatch, error):
    (tmp_path / "notes.txt").write_text("mine")
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return measure(*args)

    measure = video.measure_batch
    monkeypatch.setattr(video, "measure_batch", failing)
    with pytest.raises(type(error)):
        video.run(small_clip(6), video.Settings(batch_size=2), tmp_path)
    assert _files(tmp_path) == ["notes.txt"]


def test_report_failure_leaves_no_output(tmp_path, monkeypatch):
    import zeroskip.report

    monkeypatch.setattr(zeroskip.report, "write_report", failing_write)
    with pytest.raises(OSError):
        video.run(small_clip(2), video.Settings(batch_size=2), tmp_path / "out")
    assert _files(tmp_path) == []


@pytest.mark.parametrize("out", ["file", "file/below"])
def test_unwritable_out(tmp_path, out):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="`out` must be a writable directory"):
        video.run(small_clip(2), video.Settings(), tmp_path / out)
    assert _files(tmp_path) == ["file"]


def _record(name, active_fraction, chosen="tiles", shape=(2, 3, 32, 32)):
    return CallRecord(name, shape, "auto", chosen, active_fraction, 1.0)


def test_work_fraction_weights_calls_by_dense_cost():
    model = sparsify_(nn.Sequential(nn.Conv2d(3, 64, 7, padding=3), nn.Conv2d(64, 8, 1)))
    big, small = (video._dense_macs(model[i], shape) for i, shape in ((0, (2, 3, 32, 32)), (1, (2, 64, 32, 32))))
    records = [_record("0", 0.1), _record("1", 1.0, "dense", (2, 64, 32, 32))]
    expected = (0.1 * big + 1.0 * small) / (big + small)
    assert video.work_fraction(records, model) == pytest.approx(expected)
    assert big == 2 * 64 * 32 * 32 * 3 * 49


def test_work_fraction_of_a_bare_layer_and_of_no_call():
    layer = sparsify_(nn.Conv2d(3, 4, 3))
    assert isinstance(layer, SparseConv2d)
    assert video.work_fraction([_record("", 0.25)], layer) == pytest.approx(0.25)
    assert video.work_fraction([], layer) == 1.0


@pytest.mark.parametrize(
    "chosen, label",
    [
        ([], "none"), (["tiles"], "tiles"), (["tiles", "tiles"], "tiles"),
        (["dense", "tiles", "tiles"], "tiles:2;dense:1"),
    ],
)
def test_mode_label(chosen, label):
    assert video.mode_label([_record("x", 0.5, c) for c in chosen]) == label


@pytest.mark.parametrize("wrap", [lambda y: y, lambda y: {"out": y, "aux": [y, (y,)]}])
def test_measure_batch_compares_every_output_tensor(wrap):
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)

        def forward(self, x):
            return wrap(self.conv(x))

    dense = Wrapped().eval()
    sparse = sparsify_(copy.deepcopy(dense), mode="tiles")
    x = torch.zeros(2, 3, 16, 16)
    x[0, :, 4:6, 4:6] = 1.0
    result = video.measure_batch(0, x, dense, sparse)
    assert result.agree and result.max_abs_err < 1e-6 and result.frames == 2
    assert result.mode == "tiles" or result.mode.startswith("fill")
    assert 0 < result.sparsity_after < 100


@pytest.mark.parametrize(
    "expected, error, agree",
    [(1.0, 9e-6, True), (1.0, 2e-5, False), (0.5, 1.1e-5, False), (1000.0, 9e-3, True), (1000.0, 2e-2, False)],
)
def test_outputs_agree_scales_atol_with_the_largest_magnitude(expected, error, agree):
    dense = torch.tensor([0.0, expected])
    sparse = dense.clone()
    sparse[0] = error
    assert video.outputs_agree(sparse, dense) is agree


def test_format_summary_mentions_the_key_figures(tmp_path):
    summary = video.run(small_clip(4), video.Settings(batch_size=2), tmp_path, source={"frame_count": 9}, total=9)
    text = video.format_summary(summary)
    assert "speed-up" in text and "max |zeroskip - dense|" in text and "all 2 batches agree" in text
    assert "announces 9 frames but only 4" in text
    assert str(tmp_path / "report.png") in text
