"""The machine's load before timing, the busy warning, and the notes that explain a run's speed-ups."""

from __future__ import annotations

import os

import pytest

from zeroskip import cli, machine

QUIET = machine.Load(0.1, 2, "/proc/stat")
BUSY = machine.Load(1.0, 2, "/proc/stat")


def _stat(path, busy_ticks: int) -> str:
    """A /proc/stat with every usable CPU at ``busy_ticks`` of user time."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy_ticks} 0 0 1000 7 0 0 0 0 0" for n in sorted(os.sched_getaffinity(0))]
    path.write_text("\n".join(lines + ["intr 1 2 3", "ctxt 4"]) + "\n")
    return str(path)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="no /proc/stat here")
def test_measure_load_on_this_machine():
    load = machine.measure_load(0.05)
    assert load.source == "/proc/stat" and load.cores == machine.usable_cores()
    assert 0.0 <= load.others <= load.cores


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs CPU affinity (Linux)")
def test_measure_load_counts_busy_time_not_idle_time(tmp_path):
    """An unchanging /proc/stat: nobody worked during the window."""
    load = machine.measure_load(0.01, stat_path=_stat(tmp_path / "stat", 500))
    assert load == machine.Load(0.0, machine.usable_cores(), "/proc/stat")
    assert machine._busy_seconds(os.sched_getaffinity(0), str(tmp_path / "stat")) == pytest.approx(
        5.0 * len(os.sched_getaffinity(0)) * 100 / os.sysconf("SC_CLK_TCK")
    )


def test_fallbacks_without_proc_stat(tmp_path, monkeypatch):
    missing = str(tmp_path / "missing")
    if hasattr(os, "getloadavg"):
        monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 1.0))
        assert machine.measure_load(0.01, stat_path=missing) == machine.Load(
            min(1.5, machine.usable_cores()), machine.usable_cores(), "load average"
        )
        monkeypatch.delattr(os, "getloadavg")
    load = machine.measure_load(0.01, stat_path=missing)
    assert load.others is None and load.source == "unavailable"
    assert machine.busy_warning(load, 2) is None


def test_bad_window():
    with pytest.raises(ValueError, match=r"`window` must be positive, got 0"):
        machine.measure_load(0)


@pytest.mark.parametrize(
    ("load", "threads", "advice"),
    [(QUIET, 2, None), (BUSY, 1, None), (BUSY, 2, "try --threads 1"), (machine.Load(2.0, 2, "x"), 1, "quiet machine")],
)
def test_busy_warning(load, threads, advice):
    warning = machine.busy_warning(load, threads)
    if advice is None:
        assert warning is None
    else:
        assert warning.startswith("warning: the machine is busy") and advice in warning
        assert "\n" not in warning


def _summary(speedup=2.0, median=2.0, active=0.2, zero=95.0, size=(640, 360), threads=2, batches=4) -> dict:
    return {
        "speedup": speedup,
        "medians": {"speedup": median, "active_fraction": active, "sparsity_before": zero},
        "totals": {"batches": batches},
        "source": {"frame_width": size[0], "frame_height": size[1]},
        "environment": {"torch_threads": threads},
    }


def test_notes_explain_overall_and_median_and_stop_there_when_faster():
    notes = machine.speedup_notes(_summary(), BUSY)
    assert len(notes) == 1 and "overall: total dense time / total zeroskip time over all 4 batches" in notes[0]
    assert "median per batch" in notes[0]
    assert "over the 1 batch;" in machine.speedup_notes(_summary(batches=1))[0]


@pytest.mark.parametrize(
    ("summary", "load", "causes"),
    [
        (_summary(speedup=0.4, median=0.6), BUSY, ["busy", "--threads 1"]),
        (_summary(speedup=0.4, median=0.6, threads=1), machine.Load(2.0, 2, "x"), ["busy", "quiet machine"]),
        (_summary(speedup=0.9, median=1.1, active=0.8, zero=40.0), QUIET, ["too dense", "80%", "40%"]),
        (_summary(speedup=0.9, median=0.9, active=0.7, zero=95.0, threads=1), QUIET, ["spread out", "70%"]),
        (_summary(speedup=0.8, median=0.8, size=(96, 64)), None, ["small (96x64)", "--size"]),
        (_summary(speedup=0.9, median=0.9), QUIET, ["2 threads", "--threads 1"]),
        (_summary(speedup=0.9, median=0.9, threads=1), QUIET, ["noise"]),
    ],
)
def test_notes_say_why_zeroskip_was_slower(summary, load, causes):
    notes = machine.speedup_notes(summary, load)
    assert len(notes) == 2 and notes[1].startswith("zeroskip measured slower than dense; likely: ")
    assert all(cause in notes[1] for cause in causes), notes[1]


def test_demo_on_a_busy_machine_warns_before_and_explains_after(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(machine, "measure_load", lambda: machine.Load(2.0, 2, "/proc/stat"))
    assert cli.main(["demo", "--frames", "2", "--size", "64x48", "--threads", "2", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("zeroskip: warning: the machine is busy")
    assert "overall: total dense time / total zeroskip time over the 1 batch" in out


def test_bad_input_on_a_busy_machine_is_still_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(machine, "measure_load", lambda: BUSY)
    assert cli.main(["video", str(tmp_path / "missing.avi"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
