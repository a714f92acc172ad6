"""Smoke tests of the benchmark suite on tiny workloads: the pipeline runs and writes its files.

No timing is asserted: the machine is shared and the sizes are far too small to mean anything.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import pytest
import torch

from zeroskip import bench
from zeroskip.bench import breakdown, command, contention, heap, metadata, networks


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("cv2")
    from zeroskip.synthetic import SyntheticClip

    path = tmp_path_factory.mktemp("video") / "tiny.avi"
    SyntheticClip(96, 64, frames=14, seed=1).write(str(path))
    return path


def _tiny_settings(out: Path, video: Path | None, workloads: tuple[str, ...], **options: object) -> bench.Settings:
    return bench.Settings.quick_variant(**{
        "out": out, "workloads": workloads, "video": video, "first_frame": 10, "frames": 4, "hd_frames": 2,
        "batches": (1, 2), "threads": (1,), "heaps": ("pinned",), "contention": False, "hd_size": (72, 128),
        "sweep_size": (48, 64), "densities": (0.0, 0.05, 1.0), "repeats": 1, "min_block_s": 0.0,
        "network_models": ("resnet18",), "network_hd_models": ("resnet18",), "network_frames": 2,
        "network_repeats": 1, "peer": False, "stream_frames": 2, "stream_size": (64, 96), **options,
    })


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
        assert (row["threads"], row["heap"], row["load"]) == (1, "pinned", "quiet")
    assert [r["batch"] for r in results["sections"]["W2"]["rows"]] == [1, 2]
    assert all(r["exact"] for r in results["sections"]["W3"]["rows"])
    assert {t["status"] for t in results["targets"]} <= {"PASS", "FAIL", "NOT RUN"}
    (breakdown_,) = [r["breakdown"] for r in results["runs"] if "breakdown" in r]
    assert sum(s["share"] for s in breakdown_["stages"]) == pytest.approx(1.0)
    assert breakdown_["stages"][-1]["stage"] == "outside stages"
    markdown = (out / "results.md").read_text()
    assert "## Targets" in markdown and "W1 breakdown (1 thread, pinned heap)" in markdown
    assert "## W5: whole networks" in markdown and "| speed-up | 1 thread, pinned heap |" in markdown
    meta = results["metadata"]
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert meta["allocator"] == {"pinned": "glibc, mmap/trim thresholds pinned to 1 GiB for timing"}
    assert f"| allocator | pinned: {meta['allocator']['pinned']} |" in markdown

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
    targets = [t for t in results["targets"] if t["target"].startswith("W5 resnet18 768x576 masked")]
    assert [t["status"] for t in targets] == ["NOT RUN"]

    # W6 at 1 thread: no Ray row (it needs 2 threads to split); every stream of every run went through.
    cameras = results["sections"]["W6"]["rows"]
    assert [r["case"].split(",")[0] for r in cameras] == [
        "W6 pipeline stem", "W6 pipeline resnet18", "W6 model stage stem", "W6 model stage stem"]
    assert all(r["speedup"] > 0 and r[k]["failed_streams"] == 0 for r in cameras for k in ("zeroskip",))
    assert [r["exact"] for r in cameras] == [None, None, True, True] and cameras[0]["rss_mb_per_stream"] is not None
    assert "## W6: many cameras" in markdown


def test_every_configuration_runs_and_is_recorded(tiny_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the masked-frame cache
    out = tmp_path / "results"
    settings = _tiny_settings(out, tiny_video, ("W1", "W3"), threads=(1, 2), heaps=bench.HEAP_MODES,
                              contention=True, contention_threads=1, batches=(1,), densities=(0.05, 1.0))
    results = bench.run(settings)

    quiet = {(t, h, "quiet") for t in (1, 2) for h in bench.HEAP_MODES}
    busy = {(1, h, "busy") for h in bench.HEAP_MODES}
    for name, section in results["sections"].items():
        configs = {(r["threads"], r["heap"], r["load"]) for r in section["rows"]}
        assert configs == (quiet | busy if bench.WORKLOADS[name].contention else quiet), name
    for row in results["sections"]["W1"]["rows"]:
        # Peak memory: measured once per thread count, on the quiet runs in the pinned heap.
        assert ("memory_ratio" in row) is (row["load"] == "quiet" and row["heap"] == "pinned")
    runs = results["runs"]
    assert [(r["workload"], r["threads"], r["heap"], r["load"]) for r in runs] == [
        (name, threads, heap, load) for heap in bench.HEAP_MODES for name in ("W1", "W3")
        for threads, load in ((1, "quiet"), (2, "quiet"), (1, "busy"))[: 3 if name == "W1" else 2]]
    assert len([r for r in runs if "breakdown" in r]) == 6
    competing = [r for r in runs if r["load"] == "busy"]
    assert all(r["competitor_cpu"] is None or r["competitor_cpu"] > 0 for r in competing)
    meta = results["metadata"]
    assert meta["threads"] == [1, 2] and meta["contention_threads"] == 1 and meta["heap_modes"] == ["default", "pinned"]
    assert list(meta["allocator"]) == ["default", "pinned"] and meta["native"]
    markdown = (out / "results.md").read_text()
    assert "| speed-up | 1 thread, default heap | 2 threads, default heap | 1 thread, default heap, busy |" in markdown
    assert "## Runs" in markdown
    dense_input = [t for t in results["targets"] if t["target"].startswith("dense input")]
    assert [(t["threads"], t["heap"]) for t in dense_input] == [(1, "default"), (2, "default"), (1, "pinned"),
                                                                (2, "pinned")]
    contention_targets = [t for t in results["targets"] if "beside a busy process" in t["target"]]
    assert [t["heap"] for t in contention_targets] == ["default", "default", "pinned", "pinned"]


def test_sweep_alone_needs_no_video(tmp_path: Path):
    results = bench.run(_tiny_settings(tmp_path, None, ("W3",)))
    cases = [r["case"] for r in results["sections"]["W3"]["rows"]]
    assert cases == ["blobs 0.0%", "blobs 5.0%", "blobs 100.0%", "bands 10.0%"]
    targets = {t["target"]: t["status"] for t in results["targets"]}
    assert targets["W1 batch 1 speed-up >= 4.5x"] == "NOT RUN"
    assert [r["load"] for r in results["runs"]] == ["quiet"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "0"], "`--threads` must be a comma list of positive ints, got '0'"),
        (["--threads", "1,x"], "`--threads` must be a comma list of positive ints, got '1,x'"),
        (["--heap", "warm"], "`--heap` must be a comma list of default, pinned, got 'warm'"),
        (["--contention-threads", "-1"], "`--contention-threads` must be a positive int, got '-1'"),
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
    # Two warm-up calls each, then the rounds alternate, each in one of the balanced orders.
    assert calls == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "b"]
    assert all(t.low <= t.q1 <= t.median <= t.q3 <= t.high for t in timings.values())


@pytest.mark.parametrize("count", [2, 3, 4, 5, 6])
def test_balanced_orders_put_every_function_behind_every_other_equally_often(count):
    orders = bench.timing.balanced_orders(count)
    assert all(sorted(order) == list(range(count)) for order in orders)
    followers = [(before, after) for order in orders for before, after in zip(order, order[1:])]
    assert {pair: followers.count(pair) for pair in followers} == dict.fromkeys(
        ((a, b) for a in range(count) for b in range(count) if a != b), len(followers) // (count * (count - 1))
    )


@pytest.mark.parametrize("kind, density", [("blobs", 0.0), ("blobs", 0.013), ("blobs", 1.0), ("dots", 0.01)])
def test_synthetic_frames_have_the_asked_pixel_density(kind, density):
    frame = bench.pattern_frame((48, 64), kind, density, torch.Generator().manual_seed(0))
    assert frame.shape == (1, 3, 48, 64)
    assert int(frame.ne(0).any(1).sum()) == round(density * 48 * 64)


def test_row_bands_cover_whole_rows():
    frame = bench.pattern_frame((64, 40), "bands", 0.25, torch.Generator().manual_seed(0))
    rows = frame.ne(0).any(1)[0]
    assert rows.all(1).sum() == 16 and (rows.any(1) == rows.all(1)).all()


def test_breakdown_gives_each_stage_label_its_own_time():
    from torch.profiler import ProfilerActivity, profile, record_function

    x = torch.rand(1, 3, 64, 64)

    def call() -> None:
        x.sum()  # outside every label
        with record_function("zeroskip::check"):
            x.abs()
            with record_function("zeroskip::scan"):
                x.ne(0).any()
        with record_function("zeroskip::execute"):
            torch.nn.functional.conv2d(x, torch.rand(4, 3, 3, 3))

    call()
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        call()
    events = profiled.events()
    stages, operators, labelled = breakdown.attribute(events)
    total = {e.name: e.cpu_time_total for e in events if e.name.startswith("zeroskip::")}
    assert set(stages) == {"check", "scan", "execute"}
    assert stages["check"] == pytest.approx(total["zeroskip::check"] - total["zeroskip::scan"])
    assert stages["scan"] == pytest.approx(total["zeroskip::scan"])
    assert labelled == pytest.approx(total["zeroskip::check"] + total["zeroskip::execute"])
    assert {("aten::sum", "outside stages"), ("aten::abs", "check"), ("aten::ne", "scan"), ("aten::any", "scan"),
            ("aten::conv2d", "execute")} <= set(operators)


def test_busy_machine_is_flagged():
    meta = {"cpu_affinity": 2, "cpu_count": 2}
    runs = [{"threads": 1, "load": "quiet", "others_before": 0.1, "others": 0.9},
            {"threads": 2, "load": "quiet", "others_before": 0.1, "others": 0.2},
            {"threads": 2, "load": "busy", "others_before": 0.1, "others": 1.0}]  # the busy process itself
    assert contention.busy_note(meta, runs) == ""
    assert "up to 1.7 of 2 cores" in contention.busy_note(meta, [{**runs[0], "others": 1.7}, *runs[1:]])
    assert "up to 1.2 of 2 cores" in contention.busy_note(meta, [*runs[:2], {**runs[2], "others_before": 1.2}])


def test_busy_process_competes_and_is_ended_even_on_error():
    with pytest.raises(KeyboardInterrupt), contention.observe(60) as load:
        time.sleep(0.3)
        raise KeyboardInterrupt
    assert load.competitor and (load.competitor_cpu is None or load.competitor_cpu > 0.1)
    with pytest.raises(KeyboardInterrupt), contention.busy_process(60) as process:
        assert process.poll() is None
        raise KeyboardInterrupt
    assert process.poll() is not None


def test_quiet_runs_record_the_load():
    with contention.observe(None) as load:
        time.sleep(0.05)
    assert not load.competitor and load.competitor_cpu is None
    assert load.others is None or load.others >= 0.0


def test_busy_process_stops_by_itself_at_its_limit():
    import os
    import subprocess
    import sys

    # The competitor's own bound: with its input left open it still ends after the limit.
    process = subprocess.Popen([sys.executable, "-c", contention._SPIN, "0.2"], stdin=subprocess.PIPE)
    try:
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.stdin.close()
    assert not os.path.exists(f"/proc/{process.pid}")


def _network_row(model: str, kind: str, size: tuple[int, int], speedup: float, threads: int = 1,
                 load: str = "quiet") -> dict:
    return {"case": f"W5 {model} {kind} {size}", "model": model, "input": kind, "size": list(size), "speedup": speedup,
            "exact": True, "threads": threads, "heap": "default", "load": load}


@pytest.mark.parametrize(
    "hd, worst, statuses",
    [
        (3.6, 0.99, ["PASS", "PASS", "PASS"]),
        (3.4, 0.96, ["PASS", "FAIL", "FAIL"]),
    ],
)
def test_whole_network_targets(hd, worst, statuses):
    rows = [
        _network_row("resnet18", "masked", (576, 768), 2.1), _network_row("resnet18", "masked", (1080, 1920), hd),
        _network_row("resnet18", "unmasked", (576, 768), 1.0), _network_row("resnet50", "unmasked", (576, 768), worst),
    ]
    targets = {t["target"]: t for t in bench.evaluate_targets({"W5": {"rows": rows}}, 2)}
    names = ["W5 resnet18 768x576 masked speed-up >= 2x", "W5 resnet18 1920x1080 masked speed-up >= 3.5x",
             "dense input (W3 at 100%, W5 unmasked frames) speed-up >= 0.97x"]
    assert [targets[name]["status"] for name in names] == statuses
    assert [(targets[name]["threads"], targets[name]["heap"]) for name in names] == [(1, "default")] * 3
    assert targets[names[2]]["shown"] == f"{worst:.2f}x (worst: W5 resnet50 unmasked (576, 768); 2 cases)"


@pytest.mark.parametrize(
    "quiet, busy, statuses",
    [
        ((2.0, 1.1), (1.7, 1.0), ["PASS", "PASS"]),  # 1.1x quiet is below the floor's bar: 1.0x busy is fine
        ((2.0, 1.5), (1.5, 1.3), ["FAIL", "PASS"]),  # 0.75 of the quiet speed-up
        ((1.3, 4.0), (1.1, 0.9), ["FAIL", "FAIL"]),  # below 1x where the quiet one is above 1.2x
    ],
)
def test_contention_targets_compare_with_the_quiet_run_at_the_same_threads(quiet, busy, statuses):
    rows = [_network_row("resnet18", "masked", (576, 768), speedup, threads=2, load=load)
            for speedup, load in ((quiet[0], "quiet"), (busy[0], "busy"))]
    rows += [_network_row("resnet50", "masked", (576, 768), speedup, threads=2, load=load)
             for speedup, load in ((quiet[1], "quiet"), (busy[1], "busy"))]
    rows.append(_network_row("resnet50", "masked", (576, 768), 9.0, threads=1))  # another thread count: ignored
    found = [t for t in bench.evaluate_targets({"W5": {"rows": rows}}, 2) if "busy process" in t["target"]]
    assert [t["status"] for t in found] == statuses
    assert {(t["threads"], t["heap"]) for t in found} == {(2, "default")}


def test_per_thread_goals_and_not_run():
    rows = [{"case": "W1 batch 1", "batch": 1, "speedup": 4.2, "efficiency": 0.9, "exact": True, "threads": threads,
             "heap": "pinned", "load": "quiet"} for threads in (1, 2)]
    targets = [t for t in bench.evaluate_targets({"W1": {"rows": rows}}, 2) if t["target"].startswith("W1 batch")]
    assert [(t["target"], t["threads"], t["status"]) for t in targets] == [
        ("W1 batch 1 speed-up >= 4.5x", 1, "FAIL"), ("W1 batch 1 speed-up >= 4x", 2, "PASS"),
        ("W1 batch 16 speed-up >= 5x", None, "NOT RUN"),
    ]


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
    assert "W5, W6 skipped: torchvision is not installed" in capsys.readouterr().err
    with pytest.raises(ValueError, match="`--workloads` W5, W6 need torchvision"):
        bench.settings_from_args(parser.parse_args(["--workloads", "W3,W5", "--out", str(tmp_path)]))


def test_native_executor_is_recorded(monkeypatch: pytest.MonkeyPatch):
    from zeroskip.engine import native as _native

    monkeypatch.setattr(_native, "unavailable_reason", lambda: None)
    assert metadata.native_executor() == "used"
    monkeypatch.setattr(_native, "unavailable_reason", lambda: "ZEROSKIP_NATIVE=0")
    assert metadata.native_executor() == "not used: ZEROSKIP_NATIVE=0"


def test_heap_modes(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ValueError, match="`mode` must be one of default, pinned, got 'warm'"):
        bench.use_heap("warm")
    monkeypatch.setattr(heap, "_libc", lambda: _Libc(0))
    assert bench.use_heap("pinned") == (False, "default (thresholds not pinned: glibc mallopt refused the thresholds)")
    if platform.libc_ver()[0] == "glibc":
        monkeypatch.setattr(heap, "_changed", True)
        assert bench.use_heap("default") == (False, "glibc defaults cannot be restored: glibc mallopt refused the"
                                                    " thresholds")
        monkeypatch.setattr(heap, "_libc", lambda: _Libc(1))
        usable, state = bench.use_heap("default")
        assert usable and state.startswith("glibc's initial thresholds (128 KiB) restored")


def test_contention_runs_after_the_quiet_ones_at_its_own_thread_count():
    from zeroskip.bench.runner import configs

    settings = bench.Settings(threads=(1, 2))
    assert configs(settings, "default", bench.WORKLOADS["W1"], 4) == [
        bench.Config(1, "default"), bench.Config(2, "default"), bench.Config(4, "default", "busy")]
    quiet_only = [bench.Config(1, "pinned"), bench.Config(2, "pinned")]
    assert configs(settings, "pinned", bench.WORKLOADS["W3"], 4) == quiet_only
    assert bench.Config(2, "default", "busy").label() == "2 threads, default heap, busy"
