"""The report's sample-frame overlay: where the first zeroskip convolution computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn as nn

pytest.importorskip("cv2")

from zeroskip import sparsify_, video  # noqa: E402
from zeroskip.report import first_layer_plan  # noqa: E402


def frame_with_blob() -> np.ndarray:
    frame = np.zeros((96, 128, 3), np.uint8)
    frame[40:50, 60:75] = 200
    frame[80, 5, 1] = 9
    return frame


def covered(boxes, frame: np.ndarray) -> np.ndarray:
    """Bool (H, W): pixels inside at least one box."""
    inside = np.zeros(frame.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        inside[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
    return inside


def stem(mode: str) -> nn.Module:
    return sparsify_(video.build_model("stem"), mode=mode)


@pytest.mark.parametrize("mode", ["tiles", "rows"])
def test_boxes_cover_every_non_zero_pixel_and_little_else(mode):
    frame = frame_with_blob()
    plan = first_layer_plan(stem(mode), frame)
    assert plan.chosen == mode
    assert 0 < plan.computed < plan.total
    inside = covered(plan.boxes, frame)
    assert inside[frame.any(2)].all()
    assert inside.mean() < 0.6
    assert all(0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 96 for x0, y0, x1, y1 in plan.boxes)
    if mode == "rows":
        assert all((x0, x1) == (0, 128) for x0, _, x1, _ in plan.boxes)


def test_boxes_are_scaled_when_the_first_convolution_sees_a_smaller_grid():
    model = sparsify_(nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1)), mode="tiles")
    frame = frame_with_blob()
    plan = first_layer_plan(model, frame)
    assert covered(plan.boxes, frame)[frame.any(2)].all()


@pytest.mark.parametrize(
    # A frame large enough that auto does not find the whole layer too cheap to skip.
    "mode, frame, chosen", [("auto", np.zeros((288, 384, 3), np.uint8), "fill"), ("dense", frame_with_blob(), "dense")]
)
def test_no_boxes_when_nothing_is_skipped_tile_by_tile(mode, frame, chosen):
    model = stem("auto") if mode == "auto" else sparsify_(nn.Sequential(nn.Conv2d(3, 4, 3)), mode=mode)
    plan = first_layer_plan(model, frame)
    assert (plan.chosen, plan.boxes, plan.computed) == (chosen, [], 0)


def test_no_plan_without_a_zeroskip_convolution():
    assert first_layer_plan(nn.Sequential(nn.ReLU()), frame_with_blob()) is None


def _run_figure(tmp_path, frames: int, batch_size: int, model: str = "stem"):
    """The results, report figure and sample frame number of a short synthetic video run."""
    import zeroskip.report
    from zeroskip.synthetic import SyntheticClip

    captured = {}

    def keep(path, results, summary, sample, index, sparse):
        figure = zeroskip.report.report_figure(results, summary, sample, index, sparse)
        captured.update(results=results, figure=figure, index=index)
        path.write_bytes(b"")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zeroskip.report, "write_report", keep)
        clip = SyntheticClip(128, 96, frames=frames, seed=0)
        video.run(list(clip), video.Settings(batch_size=batch_size, model=model), tmp_path, total=frames)
    return captured


def _legend(axes) -> list[str]:
    return [text.get_text() for text in axes.get_legend().get_texts()]


@pytest.mark.parametrize("batches", [1, 2])
def test_a_single_batch_shows_bars_more_show_lines(tmp_path, batches):
    times, sparsity = _run_figure(tmp_path, 4 * batches, 4)["figure"].axes[:2]
    for axes in (times, sparsity):
        assert (len(axes.containers) > 0) == (batches == 1)  # bar containers
        assert (len(axes.lines) > 0) == (batches > 1)
    assert _legend(sparsity) == ["zero input values", "zero output values (dense)", "work computed by zeroskip"]


def test_logits_have_no_output_sparsity_panel(tmp_path):
    pytest.importorskip("torchvision")
    captured = _run_figure(tmp_path, 2, 2, model="resnet18")
    assert not any(r.spatial for r in captured["results"])
    assert _legend(captured["figure"].axes[1]) == ["zero input values", "work computed by zeroskip"]


def test_the_sample_is_the_most_active_frame(tmp_path):
    captured = _run_figure(tmp_path, 6, 3)
    assert f"frame {captured['index']} (" in captured["figure"].axes[2].get_title()
    frames = [np.zeros((4, 4, 3), np.uint8) for _ in range(4)]
    frames[2][0, 0] = frames[3][0, 0] = 7
    best = None
    for index, frame in enumerate(frames):
        best = video.most_active(best, index, frame)
    assert best[0] == 2 and best[2] == 3  # the earlier of two equals; non-zero values, not pixels


def _fake_streams_summary(count: int) -> dict:
    streams = [
        {"name": f"cam{k}", "status": "failed" if k == 1 else "ok", "frames_per_s": None if k == 1 else 10.0 + k,
         "median_active_fraction": None if k == 1 else 0.1, "median_sparsity_before": None if k == 1 else 97.0}
        for k in range(count)
    ]
    stages = {"decode_s": 1.0, "subtract_s": 2.0, "wait_for_frames_s": 0.1, "model_dense_s": 3.0,
              "model_zeroskip_s": 1.0, "check_s": 0.5, "write_s": 0.01, "wall_s": 6.0}
    return {
        "settings": {"model": "stem", "mode": "auto", "batch_size": 16, "ray": None, "workers": None},
        "totals": {"streams": count, "frames": 10 * count, "frames_per_s": 50.0, "failed_streams": 1},
        "speedup": 3.0, "max_abs_err": 0.0, "stages": stages, "streams": streams,
        "batches": [{"t_orig": 0.1, "t_sparse": 0.03}],
    }


@pytest.mark.parametrize("count", [2, 50])
def test_streams_report_names_few_streams_and_sorts_many(count):
    from zeroskip.report import streams_figure

    figure = streams_figure(_fake_streams_summary(count), ("cam0", 3, frame_with_blob()), stem("auto"))
    throughput = figure.axes[0]
    labels = [t.get_text() for t in throughput.get_yticklabels()]
    if count == 2:
        assert labels == ["cam0", "cam1 (failed)"]
    else:
        assert "50 streams, sorted" in throughput.get_xlabel()
    assert "FAILED" in figure._suptitle.get_text()
    assert len(figure.axes[3].containers) == 2  # one batch: bars
