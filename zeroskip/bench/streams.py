"""Many cameras (W6): streams of video (segments of vtest and synthetic clips) through the whole
pipeline of :func:`zeroskip.streams.run`, as ``zeroskip video`` runs it, without writing outputs; and
the comparisons W6 reports, one row each.

Pipeline runs run one model (frames/s of decode, background subtraction, model and per-stream rows
together); model-stage runs run both models on every batch, alternating, and compare them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import streams, video
from ..sources import Source

STREAMS = 16
# Frames of vtest.avi, over which its segments are spread.
_VTEST_FRAMES = 795


@dataclass(frozen=True)
class VideoSegment:
    """Frames ``[start, start + count)`` of a video file, decoded on iteration (picklable and re-iterable,
    so that a stream can run on a Ray worker and run again)."""

    path: str
    start: int
    count: int

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[np.ndarray]:
        import cv2

        capture = cv2.VideoCapture(self.path)
        try:
            capture.set(cv2.CAP_PROP_POS_FRAMES, self.start)
            for _ in range(self.count):
                ok, frame = capture.read()
                if not ok:
                    return
                yield frame
        finally:
            capture.release()


def synthetic_file(seed: int, frames: int, size: tuple[int, int]) -> str:
    """A synthetic clip of ``size`` ``(H, W)``, written once as MJPG AVI under ``$TMPDIR/zeroskip-bench/``
    so that it is decoded as a camera's would be."""
    from ..synthetic import SyntheticClip

    directory = Path(tempfile.gettempdir()) / "zeroskip-bench"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"synthetic-{size[1]}x{size[0]}-{frames}-{seed}.avi"
    if not path.is_file():
        temp = path.with_name(f".{path.name}.{os.getpid()}.avi")
        SyntheticClip(size[1], size[0], frames=frames, seed=seed).write(str(temp))
        os.replace(temp, path)
    return str(path)


def camera_sources(video_path: Path | None, count: int, frames: int, size: tuple[int, int]) -> list[Source]:
    """``count`` streams of ``frames`` frames: every other one a segment of ``video_path`` (spread over
    the clip; none without a video), the others synthetic clips of ``size`` ``(H, W)`` (vtest's)."""
    sources = []
    for k in range(count):
        if video_path is not None and k % 2 == 0:
            start = (k // 2) * max(0, _VTEST_FRAMES - frames) // max(1, count // 2)
            sources.append(Source(f"vtest-{start}", VideoSegment(str(video_path), start, frames), f"vtest@{start}"))
        else:
            segment = VideoSegment(synthetic_file(k, frames, size), 0, frames)
            sources.append(Source(f"synthetic-{k}", segment, f"syn{k}"))
    return sources


class RssPeak:
    """The largest resident set size of this process (MB) while the block runs, sampled every 20 ms."""

    def __enter__(self) -> RssPeak:
        self.peak = self.start = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def rss_mb() -> float:
    """This process's resident set size in MB (NaN where ``/proc`` is missing)."""
    try:
        with open("/proc/self/status") as handle:
            line = next(line for line in handle if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return float("nan")


def pipeline(sources: Sequence[Source], model: str, models: str, batch: int, threads: int, **options: object) -> dict:
    """One run of :func:`zeroskip.streams.run` (no outputs); its summary, with ``"rss_peak_mb"`` and
    ``"rss_growth_mb"`` over the run and ``"steady_frames_per_s"``: frames/s after the first result."""
    settings = video.Settings(batch_size=batch, model=model, threads=threads)
    with RssPeak() as peak:
        summary = streams.run(sources, settings, None, models=models, **options)
    totals = summary["totals"]
    first = totals["first_result_s"] or 0.0
    summary["steady_frames_per_s"] = totals["frames"] / (totals["wall_s"] - first) if totals["wall_s"] > first else None
    summary["rss_peak_mb"], summary["rss_growth_mb"] = peak.peak, peak.peak - peak.start
    return summary


def _run_cells(summary: dict) -> dict:
    """What a comparison row keeps of one run."""
    totals = summary["totals"]
    return {
        "frames": totals["frames"], "frames_per_s": totals["frames_per_s"],
        "steady_frames_per_s": summary["steady_frames_per_s"], "wall_s": totals["wall_s"],
        "model_s": totals["t_sparse"] if totals["t_sparse"] is not None else totals["t_orig"],
        "stages": summary["stages"], "failed_streams": totals["failed_streams"],
    }


def _ratio(numerator: dict, denominator: dict) -> tuple[float, float]:
    """Steady frames/s of one run over another's (cameras run for hours: start-up does not count), and
    the same over the whole wall time."""
    steady = numerator["steady_frames_per_s"] / denominator["steady_frames_per_s"]
    return steady, numerator["totals"]["frames_per_s"] / denominator["totals"]["frames_per_s"]


def pipeline_row(case: str, dense: dict, sparse: dict, **extra: object) -> dict:
    """Whole-pipeline steady frames/s with zeroskip over the same with dense (``speedup``; over the whole
    wall time: ``wall_speedup``); the model stage's speed-up from the same runs (``model_speedup``).
    Nothing is compared (``exact`` ``None``)."""
    steady, wall = _ratio(sparse, dense)
    return {
        "case": case, "speedup": steady, "wall_speedup": wall,
        "model_speedup": dense["totals"]["t_orig"] / sparse["totals"]["t_sparse"], "exact": None,
        "dense": _run_cells(dense), "zeroskip": _run_cells(sparse), **extra,
    }


def model_row(case: str, both: dict, **extra: object) -> dict:
    """The model stage of a run of both models on the same batches: dense time over zeroskip time."""
    return {
        "case": case, "speedup": both["speedup"], "model_speedup": both["speedup"], "exact": both["outputs_agree"],
        "max_abs_err": both["max_abs_err"], "ms_per_frame": 1e3 * both["totals"]["t_sparse"] / both["totals"]["frames"],
        "zeroskip": _run_cells(both), **extra,
    }


def ray_row(case: str, local: dict, threads: int, sources: Sequence[Source], log) -> dict | None:
    """Steady frames/s with 2 Ray workers of ``threads // 2`` threads over the in-process run ``local``
    (same total threads; over the whole wall time, actors' start-up included: ``wall_speedup``);
    ``None`` without Ray."""
    try:
        import ray
    except ImportError:
        log("  Ray is not installed: the Ray comparison is skipped (pip install 'zeroskip[ray]')")
        return None
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        remote = pipeline(sources, "stem", "zeroskip", 16, threads // 2, ray="local", workers=2)
    finally:
        if started:
            ray.shutdown()
    steady, wall = _ratio(remote, local)
    return {
        "case": case, "speedup": steady, "wall_speedup": wall, "exact": None, "ray": _run_cells(remote),
        "zeroskip": _run_cells(local),
    }


def streams_table(rows: Sequence[dict]) -> list[str]:
    """Markdown table of W6's rows: each comparison with the frames/s and time per stage of its runs."""
    header = ("case", "threads", "speed-up (steady)", "model speed-up", "frames/s (steady)", "frames", "model s",
              "decode s", "subtract s", "waits for frames s", "other", "exact")

    def number(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def runs(row: dict) -> str:
        parts = []
        for key in ("dense", "zeroskip", "ray"):
            if key in row:
                cells = row[key]
                parts.append(f"{key} {number(cells['frames_per_s'], 1)} ({number(cells['steady_frames_per_s'], 1)})")
        return "; ".join(parts)

    def stage(row: dict, key: str) -> str:
        return " / ".join(number(row[k]["stages"][key]) for k in ("dense", "zeroskip", "ray") if k in row)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        other = []
        if r.get("rss_mb_per_stream") is not None:
            other.append(f"RSS {r['rss_mb_per_stream']:.0f} MB per stream")
        if r.get("ms_per_frame") is not None:
            other.append(f"zeroskip {r['ms_per_frame']:.1f} ms/frame")
        if r.get("wall_speedup") is not None:
            other.append(f"over the wall time {r['wall_speedup']:.2f}x")
        cells = (
            r["case"], str(r["threads"]), f"**{r['speedup']:.2f}x**", number(r.get("model_speedup")) + "x", runs(r),
            " / ".join(str(r[k]["frames"]) for k in ("dense", "zeroskip", "ray") if k in r),
            " / ".join(number(r[k]["model_s"]) for k in ("dense", "zeroskip", "ray") if k in r),
            stage(r, "decode_s"), stage(r, "subtract_s"), stage(r, "wait_for_frames_s"), "; ".join(other) or "-",
            {True: "yes", False: "**NO**", None: "-"}[r["exact"]],
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines
