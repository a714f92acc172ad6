"""W6, many cameras: the whole pipeline (decode, background subtraction, model, write) over 16
streams, segments of vtest and synthetic clips at 768x576, with the dense model against zeroskip;
cross-stream batches against one stream at batch 1; Ray workers against one process; and the
memory each stream adds.

Every run goes through :func:`zeroskip.streams.run` exactly as ``zeroskip video`` does, without
writing outputs. Pipeline runs run one model (frames/s of the whole pipeline); the model-stage runs
run both on every batch, alternating, and check that they agree.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import streams, video
from .sources import Source

SIZE = (768, 576)
STREAMS = 16
# Targets of issue 12.
TARGET_PIPELINE = {"stem": 1.8, "resnet18": 1.4}
TARGET_RAY = 0.9


@dataclass(frozen=True)
class VideoSegment:
    """Frames ``[start, start + count)`` of a video file, decoded on iteration (picklable, re-iterable)."""

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


def _synthetic_file(seed: int, frames: int) -> str:
    """A synthetic 768x576 clip written once as MJPG AVI (so that it is decoded like a camera's)."""
    from .synthetic import SyntheticClip

    directory = Path(tempfile.gettempdir()) / "zeroskip-bench"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"synthetic-{SIZE[0]}x{SIZE[1]}-{frames}-{seed}.avi"
    if not path.is_file():
        temp = path.with_suffix(f".{os.getpid()}.avi")
        SyntheticClip(*SIZE, frames=frames, seed=seed).write(str(temp))
        os.replace(temp, path)
    return str(path)


def w6_sources(video_path: Path | None, count: int, frames: int) -> list[Source]:
    """``count`` streams of ``frames`` frames: segments of ``video_path`` spread over the clip (every
    other stream; none without a video), the rest synthetic clips, all 768x576."""
    sources = []
    clip_frames = 795
    for k in range(count):
        if video_path is not None and k % 2 == 0:
            start = (k // 2) * max(0, clip_frames - frames) // max(1, count // 2)
            sources.append(Source(f"vtest-{start}", VideoSegment(str(video_path), start, frames), f"vtest@{start}"))
        else:
            sources.append(Source(f"synthetic-{k}", VideoSegment(_synthetic_file(k, frames), 0, frames), f"syn{k}"))
    return sources


class _RssPeak:
    """The largest resident set size of this process while the block runs, sampled every 20 ms."""

    def __enter__(self) -> _RssPeak:
        self.peak = self.start = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            line = next(line for line in handle if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return float("nan")


def _row(case: str, summary: dict, peak: _RssPeak, **extra: object) -> dict:
    totals, settings = summary["totals"], summary["settings"]
    first = totals["first_result_s"] or 0.0
    steady = (totals["frames"] / (totals["wall_s"] - first)) if totals["wall_s"] > first else None
    return {
        "case": case,
        "model": settings["model"],
        "streams": totals["streams"],
        "frames": totals["frames"],
        "batch": settings["batch_size"],
        "models": settings["models"],
        "ray_workers": settings["workers"],
        "threads": settings["threads"],
        "frames_per_s": totals["frames_per_s"],
        "wall_s": totals["wall_s"],
        "first_result_s": first,
        "steady_frames_per_s": steady,
        "t_orig": totals["t_orig"],
        "t_sparse": totals["t_sparse"],
        "model_speedup": summary["speedup"],
        "exact": summary["outputs_agree"] if settings["models"] == "both" else None,
        "max_abs_err": summary["max_abs_err"],
        "stages": summary["stages"],
        "failed_streams": totals["failed_streams"],
        "rss_peak_mb": peak.peak,
        "rss_growth_mb": peak.peak - peak.start,
        **extra,
    }


def w6(
    video_path: Path | None,
    *,
    threads: int,
    frames: int = 32,
    network_frames: int = 2,
    ray: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Run W6 and return its section of the benchmark results (``kind`` ``"streams"``).

    Args:
        video_path: vtest.avi (half the streams are its segments), or ``None`` for synthetic only.
        threads: torch threads of in-process runs; Ray runs use two workers of ``threads // 2``.
        frames: frames per stream of the stem runs.
        network_frames: frames per stream of the resnet18 runs.
        ray: include the Ray run (needs ``ray``; skipped with a note when it is not installed).
    """
    rows = []
    notes = []

    def run(case: str, sources: Sequence[Source], model: str, models: str, batch: int, **options: object) -> dict:
        settings = video.Settings(batch_size=batch, model=model, threads=options.pop("threads", threads))
        with _RssPeak() as peak:
            summary = streams.run(sources, settings, None, models=models, **options)
        row = _row(case, summary, peak)
        rows.append(row)
        log(f"  {case:<52} {row['frames_per_s']:7.1f} frames/s  model {row['t_orig'] or 0:7.2f} s dense,"
            f" {row['t_sparse'] or 0:7.2f} s zeroskip  (wall {row['wall_s']:.1f} s)")
        return row

    # Memory first, before earlier runs' heap can hide growth: 4 streams, then 16.
    for count in (4, STREAMS):
        run(f"memory: stem zeroskip, {count} streams", w6_sources(video_path, count, 8), "stem", "zeroskip", 16)
    sources = w6_sources(video_path, STREAMS, frames)
    for model, per_stream in (("stem", frames), ("resnet18", network_frames)):
        chosen = sources if per_stream == frames else w6_sources(video_path, STREAMS, per_stream)
        for models in ("dense", "zeroskip"):
            run(f"pipeline: {model} {models}, {STREAMS} streams, batch 16", chosen, model, models, 16)
    run(f"model stage: stem, {STREAMS} streams, cross-stream batch 16", sources, "stem", "both", 16)
    first = sources[0].target
    one = Source("one", VideoSegment(first.path, first.start, 2 * frames), "one")
    run("model stage: stem, 1 stream, batch 1", [one], "stem", "both", 1)
    if ray:
        try:
            import ray as ray_module
        except ImportError:
            notes.append("The Ray run was skipped: Ray is not installed (pip install 'zeroskip[ray]').")
        else:
            started = not ray_module.is_initialized()
            if started:
                import logging

                ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            try:
                run(f"ray: stem zeroskip, {STREAMS} streams, 2 workers x {max(1, threads // 2)} threads", sources,
                    "stem", "zeroskip", 16, ray="local", workers=2, threads=max(1, threads // 2))
            finally:
                if started:
                    ray_module.shutdown()
    return {
        "title": f"W6: many cameras, {STREAMS} streams of {SIZE[0]}x{SIZE[1]} through the whole pipeline",
        "kind": "streams",
        "rows": rows,
        "derived": derived(rows),
        "notes": notes + [
            "Pipeline rows run one model: frames/s of decode, background subtraction (MOG, in 2 prefetch"
            " threads), model and per-stream rows together. Model-stage rows run both models on every batch"
            " (alternating) and compare them. *steady*: frames/s after the first result (start-up excluded:"
            " models built, Ray actors started). Stages are summed over threads: decoding and subtraction"
            " overlap the model. Memory rows: RSS growth during the run, its slope between 4 and 16 streams"
            " is the memory one stream adds.",
        ],
    }


def derived(rows: Sequence[dict]) -> dict:
    """The figures the targets are about, from the rows."""
    by_case = {row["case"]: row for row in rows}

    def find(prefix: str) -> dict | None:
        return next((row for case, row in by_case.items() if case.startswith(prefix)), None)

    out: dict[str, float | None] = {}
    for model in TARGET_PIPELINE:
        dense, sparse = find(f"pipeline: {model} dense"), find(f"pipeline: {model} zeroskip")
        out[f"pipeline_speedup_{model}"] = (
            sparse["frames_per_s"] / dense["frames_per_s"] if dense and sparse and dense["frames_per_s"] else None
        )
        out[f"model_speedup_{model}"] = (
            dense["t_orig"] / sparse["t_sparse"] if dense and sparse and sparse["t_sparse"] else None
        )
    batched, single = find("model stage: stem, 16"), find("model stage: stem, 1 stream")
    out["model_speedup_batch16_streams"] = batched["model_speedup"] if batched else None
    out["model_speedup_batch1_stream"] = single["model_speedup"] if single else None
    out["zeroskip_ms_per_frame_batch16"] = 1e3 * batched["t_sparse"] / batched["frames"] if batched else None
    out["zeroskip_ms_per_frame_batch1"] = 1e3 * single["t_sparse"] / single["frames"] if single else None
    ray_row, local = find("ray:"), find("pipeline: stem zeroskip")
    if ray_row and local:
        out["ray_vs_process"] = ray_row["frames_per_s"] / local["frames_per_s"]
        out["ray_vs_process_steady"] = (
            ray_row["steady_frames_per_s"] / local["steady_frames_per_s"]
            if ray_row["steady_frames_per_s"] and local["steady_frames_per_s"] else None
        )
    small, large = find("memory: stem zeroskip, 4 "), find(f"memory: stem zeroskip, {STREAMS} ")
    if small and large:
        out["rss_mb_per_stream"] = (large["rss_peak_mb"] - small["rss_peak_mb"]) / (STREAMS - 4)
    return out


def targets(section: dict, w1_batch16_speedup: float | None) -> list[dict]:
    """Issue 12's targets as ``{"target", "measured", "shown", "status"}`` rows."""
    figures = section["derived"]
    rows = []

    def add(target: str, measured: float | None, bar: float | None) -> None:
        status = "n/a" if measured is None or bar is None else ("met" if measured >= bar else "missed")
        rows.append({"target": target, "measured": measured,
                     "shown": "-" if measured is None else f"{measured:.2f}x", "status": status})

    for model, bar in TARGET_PIPELINE.items():
        add(f"W6 pipeline frames/s, {model}, zeroskip / dense >= {bar}x", figures.get(f"pipeline_speedup_{model}"),
            bar)
    shown = f"{w1_batch16_speedup:.2f}x" if w1_batch16_speedup else "W1 batch 16"
    add(f"W6 model stage, stem, 16 streams batch 16 >= W1 batch 16 ({shown})",
        figures.get("model_speedup_batch16_streams"), w1_batch16_speedup)
    add(f"W6 Ray 2 workers / in process frames/s >= {TARGET_RAY}x", figures.get("ray_vs_process"), TARGET_RAY)
    return rows


def streams_table(rows: Sequence[dict]) -> list[str]:
    """Markdown table of W6's rows."""
    header = ("case", "frames", "frames/s (steady)", "wall s", "dense model s", "zeroskip model s", "model speed-up",
              "decode s", "subtract s", "waits for frames s", "RSS growth MB", "exact")

    def number(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        stages = r["stages"]
        cells = (
            r["case"], str(r["frames"]), f"{number(r['frames_per_s'], 1)} ({number(r['steady_frames_per_s'], 1)})",
            number(r["wall_s"], 1), number(r["t_orig"]), number(r["t_sparse"]),
            "-" if r["model_speedup"] is None else f"**{r['model_speedup']:.2f}x**",
            number(stages["decode_s"]), number(stages["subtract_s"]), number(stages["wait_for_frames_s"]),
            number(r["rss_growth_mb"], 0), {True: "yes", False: "**NO**", None: "-"}[r["exact"]],
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def streams_lines(section: dict) -> list[str]:
    """Markdown of W6: the table and the derived figures."""
    figures = section["derived"]
    lines = streams_table(section["rows"])
    lines += ["", "| figure | value |", "|---|---|"]
    lines += [f"| {key} | {'-' if value is None else f'{value:.3g}'} |" for key, value in figures.items()]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zeroskip.streams_bench [--quick] [--threads N] [--out DIR] [--video PATH]``: run W6
    alone and write ``W6.json`` and ``W6.md``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m zeroskip.streams_bench", description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="8 frames per stream, 1 for resnet18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--video", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/vtest.avi")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/W6"))
    parser.add_argument("--w1-batch16", type=float, default=None, help="W1 batch 16 speed-up to compare with")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load = os.getloadavg()
    section = w6(
        args.video if args.video.is_file() else None, threads=args.threads, frames=8 if args.quick else 32,
        network_frames=1 if args.quick else 2, ray=not args.no_ray,
    )
    results = {
        "section": section, "targets": targets(section, args.w1_batch16), "load_average_start": load,
        "load_average_end": os.getloadavg(), "environment": video.environment(),
        "elapsed_s": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "W6.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [f"# {section['title']}", "", f"Load average at the start {load[0]:.2f}, at the end"
             f" {results['load_average_end'][0]:.2f} (2 cores); torch threads {args.threads}.", ""]
    lines += ["| target | measured | status |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['shown']} | **{t['status']}** |" for t in results["targets"]]
    lines += ["", *streams_lines(section), "", *section["notes"]]
    (args.out / "W6.md").write_text("\n".join(lines) + "\n")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
