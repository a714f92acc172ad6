"""Observability: ``zeroskip.profile()`` records and summary, and the ``ZEROSKIP_VERBOSE`` stderr log."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import zeroskip

# Large enough that auto skips work (smaller layers are too cheap to bother).
SHAPE = (2, 3, 128, 160)
# Large enough for the auto mode to find the check worth its cost.
AUTO_SHAPE = (2, 3, 256, 320)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.delenv("ZEROSKIP_VERBOSE", raising=False)
    with torch.no_grad():
        yield


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(16, 8, 3, padding=1)))


def test_profile_records_module_names_from_sparsify(pattern):
    model = zeroskip.sparsify_(_model(), mode="tiles")
    x = pattern("blobs", SHAPE)
    with zeroskip.profile() as prof:
        model(x)
        model(x[0])
    assert [r.name for r in prof.records] == ["0", "2.0", "0", "2.0"]
    first, second = prof.records[:2]
    assert first.input_shape == SHAPE and second.input_shape == (2, 16, 64, 80)
    assert prof.records[2].input_shape == SHAPE[1:]
    assert first.mode == "tiles" and first.chosen == "tiles"
    assert 0.0 < first.active_fraction < 1.0
    assert all(r.time_ms >= 0.0 for r in prof.records)
    assert "tiles=" in first.detail and "tile=" in first.detail


@pytest.mark.parametrize(
    ("where", "mode", "chosen"),
    [
        ("zeros", "auto", "fill"),
        ("zeros", "rows", "fill"),
        ("dense", "auto", "dense"),
        ("blobs", "dense", "dense"),
        ("row_band", "rows", "rows"),
        ("blobs", "tiles", "tiles"),
    ],
)
def test_profile_records_what_ran(where, mode, chosen, pattern, weights):
    weight, bias = weights(64, 3, (7, 7))
    with zeroskip.profile() as prof:
        zeroskip.conv2d(pattern(where, AUTO_SHAPE), weight, bias, stride=2, padding=3, mode=mode)
    (record,) = prof.records
    assert record.name is None and record.mode == mode and record.chosen == chosen
    expected_fraction = {"fill": 0.0, "dense": 1.0}.get(chosen)
    if expected_fraction is not None:
        assert record.active_fraction == expected_fraction
    else:
        assert 0.0 < record.active_fraction < 1.0


def test_profile_records_dense_reason(pattern, weights):
    weight, bias = weights(16, 3, (7, 7))
    x = pattern("blobs", SHAPE)
    weight[0, 0, 0, 0] = float("inf")
    with zeroskip.profile() as prof:
        zeroskip.conv2d(x, weight, bias, stride=2, padding=3, mode="tiles")
        with torch.enable_grad():
            zeroskip.conv2d(x.requires_grad_(), weight, bias, stride=2, padding=3, mode="tiles")
    assert [r.chosen for r in prof.records] == ["dense", "dense"]
    assert "non-finite" in prof.records[0].detail and "autograd" in prof.records[1].detail


def test_nested_profiles_and_exit(pattern, weights):
    weight, _ = weights(4, 3, (3, 3))
    x = pattern("blobs", SHAPE)
    with zeroskip.profile() as outer:
        zeroskip.conv2d(x, weight, mode="tiles")
        with zeroskip.profile() as inner:
            zeroskip.conv2d(x, weight, mode="rows")
    zeroskip.conv2d(x, weight)
    assert [r.mode for r in outer.records] == ["tiles", "rows"]
    assert [r.mode for r in inner.records] == ["rows"]


def test_profile_closes_on_error(pattern, weights):
    weight, _ = weights(4, 3, (3, 3))
    with pytest.raises(ValueError), zeroskip.profile() as prof:
        zeroskip.conv2d(torch.zeros(2, 3), weight)
    zeroskip.conv2d(pattern("blobs", SHAPE), weight)
    assert prof.records == []


def test_summary_table(pattern):
    model = zeroskip.sparsify_(_model(), mode="rows")
    with zeroskip.profile() as prof:
        model(pattern("row_band", SHAPE))
    lines = prof.summary().splitlines()
    assert "module" in lines[0] and "input" in lines[0] and "ms" in lines[0]
    assert len(lines) == 2 + 2 + 2
    assert lines[2].split()[:3] == ["0", "0", "2x3x128x160"]
    assert lines[3].split()[:3] == ["1", "2.0", "2x16x64x80"]
    assert "rows" in lines[2]
    assert lines[-1].startswith("2 calls")


def test_summary_of_empty_profile():
    with zeroskip.profile() as prof:
        pass
    assert prof.summary().splitlines()[-1].startswith("0 calls")


@pytest.mark.parametrize("level", ["1", "2"])
def test_verbose_prints_one_line_per_call(level, monkeypatch, capsys, pattern):
    monkeypatch.setenv("ZEROSKIP_VERBOSE", level)
    model = zeroskip.sparsify_(_model(), mode="tiles")
    model(pattern("blobs", SHAPE))
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 2
    for line, name, shape in zip(lines, ["0", "2.0"], ["2x3x128x160", "2x16x64x80"]):
        fields = line.split(",")
        assert fields[:4] == ["zeroskip", "conv2d", name, shape]
        assert "mode=tiles" in fields and "ran=tiles" in fields
        assert any(f.startswith("active=") for f in fields) and any(f.endswith("ms") for f in fields)
        assert ("tiles=" in line) == (level == "2")


def test_verbose_level_2_shows_bands_for_rows(monkeypatch, capsys, pattern, weights):
    monkeypatch.setenv("ZEROSKIP_VERBOSE", "2")
    weight, _ = weights(4, 3, (3, 3))
    zeroskip.conv2d(pattern("row_band", SHAPE), weight, mode="rows")
    assert any(word in capsys.readouterr().err for word in ("rows=", "boxes="))  # native, torch executor


@pytest.mark.parametrize("value", ["0", "", "yes"])
def test_verbose_off(value, monkeypatch, capsys, pattern, weights):
    monkeypatch.setenv("ZEROSKIP_VERBOSE", value)
    weight, _ = weights(4, 3, (3, 3))
    zeroskip.conv2d(pattern("blobs", SHAPE), weight, mode="tiles")
    assert capsys.readouterr().err == ""


def test_verbose_and_profile_together(monkeypatch, capsys, pattern, weights):
    monkeypatch.setenv("ZEROSKIP_VERBOSE", "1")
    weight, _ = weights(4, 3, (3, 3))
    with zeroskip.profile() as prof:
        zeroskip.conv2d(pattern("blobs", SHAPE), weight, mode="rows")
    assert len(prof.records) == 1 and len(capsys.readouterr().err.splitlines()) == 1


def test_summary_gives_the_plan_or_reason_of_every_call_and_counts_dense_reasons(pattern, weights):
    weight, bias = weights(16, 3, (7, 7))
    x = pattern("blobs", SHAPE)
    with zeroskip.profile() as prof:
        zeroskip.conv2d(x, weight, bias, stride=2, padding=3, mode="tiles")
        zeroskip.conv2d(x, weight, bias, stride=2, padding=3, mode="dense")
        zeroskip.conv2d(x, weight, bias, stride=2, padding=3, mode="dense")
    lines = prof.summary().splitlines()
    assert lines[0].endswith("plan or reason")
    assert lines[2].endswith(prof.records[0].detail) and lines[3].endswith("mode=dense")
    assert lines[-1] == "ran dense: 2 x mode=dense"


def test_dense_reason_of_a_sparsified_model_on_a_dense_input(pattern):
    model = zeroskip.sparsify_(_model())
    with zeroskip.profile() as prof:
        model(pattern("dense", SHAPE))
    assert [r.detail for r in prof.records] == ["dense model input"] * 2
    assert prof.summary().splitlines()[-1] == "ran dense: 2 x dense model input"
