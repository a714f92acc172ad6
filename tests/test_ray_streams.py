"""Streams sharded over Ray actors: a local instance, a killed actor, and ``--ray`` without Ray."""

from __future__ import annotations

import csv
import json
import logging
import sys
import time

import pytest

pytest.importorskip("cv2")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from conftest import CLIP_FRAMES  # noqa: E402

from zeroskip import cli, streams, video  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def frames_in_tables(out, summary) -> dict[str, int]:
    counts = {}
    for stream in summary["streams"]:
        with open(out / stream["name"] / "frames.csv", newline="") as handle:
            counts[stream["name"]] = sum(int(row["frames"]) for row in csv.DictReader(handle))
    return counts


def test_ray_run_through_the_command(ray_local, tmp_path, clip_path, capsys):
    out = tmp_path / "out"
    argv = ["video", *[str(clip_path)] * 3, "--ray", "--workers", "2", "--threads", "1", "--batch-size", "4",
            "--out", str(out)]
    assert cli.main(argv) == 0
    assert "(Ray, 2 workers)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["name"], s["worker"], s["attempts"]) for s in summary["streams"]] == [
        ("clip", 0, 1), ("clip-2", 1, 1), ("clip-3", 0, 1)
    ]
    assert frames_in_tables(out, summary) == {"clip": CLIP_FRAMES, "clip-2": CLIP_FRAMES, "clip-3": CLIP_FRAMES}
    assert summary["outputs_agree"] and summary["totals"]["frames"] == 3 * CLIP_FRAMES
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG")


def _kill(ray, name: str) -> None:
    """Kill the named actor and wait until it is gone."""
    actor = ray.get_actor(name)
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(actor.poll.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError(f"actor {name} survived ray.kill")


def test_a_killed_actor_streams_rerun_exactly_once(ray_local, tmp_path, clip_path):
    killed = []

    def on_progress(name, frames):
        # At worker 0's first results: its first actor is killed before it can finish.
        if frames > 0 and name in ("clip", "clip-3") and not killed:
            (actor,) = [n for n in ray_local.util.list_named_actors() if n.endswith("-0-1")]
            _kill(ray_local, actor)
            killed.append(actor)

    out = tmp_path / "out"
    summary = streams.run(
        [clip_path] * 3, video.Settings(batch_size=2, threads=1), out, ray="local", workers=2, progress=on_progress
    )
    assert killed
    assert [(s["name"], s["worker"], s["attempts"], s["status"]) for s in summary["streams"]] == [
        ("clip", 0, 2, "ok"), ("clip-2", 1, 1, "ok"), ("clip-3", 0, 2, "ok")
    ]
    assert frames_in_tables(out, summary) == {"clip": CLIP_FRAMES, "clip-2": CLIP_FRAMES, "clip-3": CLIP_FRAMES}
    assert summary["totals"]["frames"] == 3 * CLIP_FRAMES


def test_ray_without_ray_is_one_line(tmp_path, clip_path, capsys, monkeypatch):
    # None in sys.modules makes `import ray` fail as if Ray were not installed.
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match="pip install 'zeroskip\\[ray\\]'"):
        streams.run([clip_path], video.Settings(), tmp_path / "api", ray="local")
    assert cli.main(["video", str(clip_path), "--ray", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == "zeroskip: error: `--ray` needs Ray, which is not installed: pip install 'zeroskip[ray]'\n"
    assert list(tmp_path.iterdir()) == []
