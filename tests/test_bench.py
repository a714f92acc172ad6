"""Smoke tests of the benchmark suite on tiny workloads: the pipeline runs and writes its files.

No timing is asserted: the machine is shared and the sizes are far too small to mean anything.
"""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path

import pytest
import torch

from zeroskip import bench
from zeroskip.bench import breakdown, command, heap, metadata, networks


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
        network_models=("resnet18",), network_hd_models=("resnet18",), network_frames=2, network_repeats=1, peer=False,
    )


def test_run_writes_results_for_every_workload(tiny_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("torchvision")
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
    assert "## Targets" in markdown and "W1 breakdown" in markdown and "## W5: whole networks" in markdown
    meta = results["metadata"]
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert meta["allocator"] == "glibc, mmap/trim thresholds pinned to 1 GiB for timing"
    assert f"| allocator | {meta['allocator']} |" in markdown

    networks = results["sections"]["W5"]["rows"]
    assert [r["case"] for r in networks] == ["W5 resnet18 96x64", "W5 resnet18 128x72", "W5 resnet18 96x64 unmasked"]
    assert [r["input"] for r in networks] == ["masked", "masked", "unmasked"]
    for row in networks:
        assert row["exact"], row["mismatch"]
        assert row["max_error"] < 1e-4 and row["dense_ms"] > 0 and row["zeroskip_ms"] > 0
        assert list(row["stages"]) == ["conv1", "layer1", "layer2", "layer3", "layer4"]
        assert all(0.0 <= f <= 1.0 for f in [row["active_fraction"], *row["stages"].values()])
        assert len(row["layers"]) == 20 and row["frames"] == 2
    assert networks[2]["pixel_density"] == pytest.approx(1.0, abs=0.05)
    targets = {t["target"]: t for t in results["targets"]}
    assert targets["W5 resnet18 768x576 masked, batch 1, speed-up >= 1.5x"]["status"] == "NOT RUN"
    assert "(resnet18; 1 model)" in targets["W5 every model on unmasked (dense) frames at most 3% slower than dense"][
        "shown"]


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
        (["--workloads", "W1,W9"], "`--workloads` must be a comma list of W1, W2, W3, W4, W5"),
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
        ("aten::amax", ["_reduce_blocks", "cell_activity", "scan_activity"], "activity check"),
        ("zeroskip::scan", ["scan_activity", "_forward"], "activity check"),
        ("zeroskip::scan", ["sample_activity", "_sampled_reason"], "activity check"),
        ("aten::cumsum", ["window_any", "scan_activity"], "activity check"),
        ("aten::nonzero", ["row_boxes", "_forward"], "planning"),
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
    assert breakdown._operator_step(operator, functions) == step


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
    assert bool(breakdown._PACKAGE_FILE.search(frame)) is inside


def test_busy_machine_is_flagged():
    quiet = {"cpu_affinity": 2, "cpu_count": 2, "load_average_start": (1.5, 1, 1), "load_average_end": (1.9, 1, 1)}
    assert metadata.busy_note(quiet) == ""
    assert "busy" in metadata.busy_note({**quiet, "load_average_end": (5.2, 4, 3)})


def _network_row(model: str, kind: str, size: tuple[int, int], speedup: float) -> dict:
    return {"case": f"W5 {model}", "model": model, "input": kind, "size": list(size), "speedup": speedup, "exact": True}


@pytest.mark.parametrize(
    "hd, worst, statuses",
    [
        (2.1, 0.99, ["PASS", "PASS", "PASS"]),
        (1.9, 0.96, ["PASS", "FAIL", "FAIL"]),
    ],
)
def test_whole_network_targets(hd, worst, statuses):
    rows = [
        _network_row("resnet18", "masked", (576, 768), 1.6), _network_row("resnet18", "masked", (1080, 1920), hd),
        _network_row("resnet18", "unmasked", (576, 768), 1.0), _network_row("resnet50", "unmasked", (576, 768), worst),
    ]
    targets = {t["target"]: t for t in bench.evaluate_targets({"W5": {"rows": rows}})}
    names = ["W5 resnet18 768x576 masked, batch 1, speed-up >= 1.5x",
             "W5 resnet18 1920x1080 masked, batch 1, speed-up >= 2x",
             "W5 every model on unmasked (dense) frames at most 3% slower than dense"]
    assert [targets[name]["status"] for name in names] == statuses
    assert targets[names[2]]["shown"] == f"worst {worst:.3f}x (resnet50; 2 models)"


class _Libc:
    def __init__(self, answer: int):
        self.answer, self.calls = answer, []

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append((option, value))
        return self.answer


def test_timing_heap_pins_both_thresholds_to_1_gib(monkeypatch: pytest.MonkeyPatch):
    libc = _Libc(1)
    monkeypatch.setattr(heap, "_libc", lambda: libc)
    assert bench.pin_timing_heap() == "glibc, mmap/trim thresholds pinned to 1 GiB for timing"
    assert libc.calls == [(-3, 1 << 30), (-1, 1 << 30)]


def test_without_mallopt_the_allocator_is_recorded_as_default(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(heap, "_libc", lambda: _Libc(0))
    assert bench.pin_timing_heap() == "default (thresholds not pinned: glibc mallopt refused the thresholds)"

    def missing():
        raise OSError("no C library")

    monkeypatch.setattr(heap, "_libc", missing)
    assert bench.pin_timing_heap() == "default (thresholds not pinned: needs glibc mallopt (no C library))"


@pytest.mark.parametrize(
    "model, expected",
    [
        ("resnet18", ["conv1", "layer1", "layer2", "layer3", "layer4"]),
        ("mobilenet_v2", [f"features.{i}" for i in range(19)]),
        ("fcn_resnet50", ["backbone.conv1", *(f"backbone.layer{i}" for i in range(1, 5)), "classifier"]),
    ],
)
def test_stages_of_the_zoo(model, expected):
    pytest.importorskip("torchvision")
    from zeroskip.models import build_model

    names = [name for name, m in build_model(model).named_modules() if isinstance(m, torch.nn.Conv2d)]
    # A profile lists every convolution once per frame: repeats change nothing.
    assert list(dict.fromkeys(bench.stages(names + names).values())) == expected


def test_stage_cell_drops_a_shared_prefix():
    assert networks.stage_cell({"features.0": 0.061, "features.1": 0.5}) == "0 6%, 1 50%"
    assert networks.stage_cell({"conv1": 0.06, "layer1": 0.14}) == "conv1 6%, layer1 14%"
    assert networks.stage_cell({"features": 1.0}) == "features 100%"


def test_default_run_goes_on_without_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setattr(command, "_has_module", lambda name: name != "torchvision")
    parser = bench.build_parser()
    settings = bench.settings_from_args(parser.parse_args(["--workloads", "W3", "--out", str(tmp_path)]))
    assert settings.workloads == ("W3",)
    settings = bench.settings_from_args(parser.parse_args(["--no-peer", "--video", __file__, "--out", str(tmp_path)]))
    assert settings.workloads == ("W1", "W2", "W3", "W4")
    assert "W5 skipped: torchvision is not installed" in capsys.readouterr().err
    with pytest.raises(ValueError, match="`--workloads` W5 need torchvision"):
        bench.settings_from_args(parser.parse_args(["--workloads", "W3,W5", "--out", str(tmp_path)]))
