"""The ``zeroskip`` command: ``zeroskip demo``, ``zeroskip video PATH`` and ``zeroskip bench``.

Exit codes: 0 success, 1 zeroskip's output differed from dense or a stream of a many-stream run
failed, 2 bad input (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from . import machine, video
from .masking import SUBTRACTORS


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _frame_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        size = (0, 0)
    if min(size) < 32:
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT with both at least 32, got {text!r}")
    return size


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``zeroskip`` command."""
    parser = argparse.ArgumentParser(
        prog="zeroskip",
        description="Exact sparse convolution inference: run the masked-video experiment or the benchmarks.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,video,bench}")

    run_options = argparse.ArgumentParser(add_help=False)
    run_options.add_argument("--batch-size", type=_positive_int, default=16, help="frames per batch (default 16)")
    run_options.add_argument("--max-frames", type=_positive_int, help="stop after this many frames")
    run_options.add_argument("--subtractor", choices=SUBTRACTORS, default="mog", help="background subtractor")
    run_options.add_argument("--model", choices=tuple(video.MODELS), default="stem",
                             help="stem: the original 7x7 stride-2 conv, 3->64 (default); others: whole networks")
    run_options.add_argument("--mode", choices=video.SPARSE_MODES, default="auto", help="zeroskip mode")
    run_options.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's choice)")
    run_options.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the model weights")

    demo = commands.add_parser(
        "demo", parents=[run_options], help="run the experiment on a built-in synthetic clip",
        description="Generate a synthetic static-camera clip and run the video experiment on it.",
    )
    # About half a minute on two idle cores.
    demo.add_argument("--frames", type=_positive_int, default=64, help="clip length (default 64)")
    demo.add_argument("--size", type=_frame_size, default=(640, 360), metavar="WxH", help="frame size (640x360)")
    demo.add_argument("--out", default=os.path.join("zeroskip-out", "demo"), help="output directory")

    clip = commands.add_parser(
        "video", parents=[run_options], help="run the experiment on video files or cameras",
        description="Mask a static-camera video, run dense and zeroskip models on the same masked batches,"
        " and write frames.csv, summary.json and report.png. With several sources: one run, frames batched"
        " across streams, one frames.csv per stream under --out/<stream>/.",
    )
    clip.add_argument(
        "sources", nargs="+", metavar="SOURCE",
        help="video files, directories of videos, list files (.txt: one source a line), camera indices or"
        " rtsp:// / http:// URLs; several make one run with frames batched across streams",
    )
    clip.add_argument(
        "--out", help="output directory (default: zeroskip-out/<video name>, or zeroskip-out/streams for several)",
    )
    clip.add_argument(
        "--ray", nargs="?", const="local", metavar="ADDRESS",
        help="shard the streams over Ray actors: a local Ray instance, or the cluster at ADDRESS",
    )
    clip.add_argument("--workers", type=_positive_int, help="Ray actors (with --ray; default 2)")

    commands.add_parser(
        "bench", add_help=False, help="run the benchmark suite (arguments go to it; try: zeroskip bench --help)",
    )
    return parser


def _settings(args: argparse.Namespace) -> video.Settings:
    return video.Settings(
        batch_size=args.batch_size, max_frames=args.max_frames, subtractor=args.subtractor, model=args.model,
        mode=args.mode, threads=args.threads, seed=args.seed,
    )


def _demo(args: argparse.Namespace) -> tuple[dict, machine.Load]:
    from .synthetic import SyntheticClip

    width, height = args.size
    clip = SyntheticClip(width, height, frames=args.frames, seed=args.seed)
    source = {"synthetic": {"width": width, "height": height, "frames": args.frames, "seed": args.seed}}
    settings = _settings(args)
    load = _warn_if_busy(args)
    return video.run(iter(clip), settings, args.out, source=source, total=len(clip)), load


def _video(args: argparse.Namespace) -> tuple[dict, machine.Load]:
    from . import sources, streams

    settings = _settings(args)
    if args.workers is not None and args.ray is None:
        raise ValueError(f"`--workers` needs `--ray`, got --workers {args.workers} without it")
    resolved = sources.resolve(args.sources)
    if args.ray is None and len(args.sources) == 1 and [s.text for s in resolved] == args.sources:
        # One clip or camera: the single-stream run, its outputs directly in --out.
        frames, info = resolved[0].open()
        out = args.out or os.path.join("zeroskip-out", Path(args.sources[0]).stem)
        load = _warn_if_busy(args)
        return video.run(frames, settings, out, source=asdict(info), total=info.frame_count), load
    out = args.out or os.path.join("zeroskip-out", "streams")
    load = _warn_if_busy(args)
    return streams.run(resolved, settings, out, progress=True, ray=args.ray, workers=args.workers or 2), load


def _bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("zeroskip.bench")
    except ModuleNotFoundError as error:
        if error.name != "zeroskip.bench":
            raise
        print("zeroskip: error: the benchmark suite (zeroskip.bench) is not in this installation", file=sys.stderr)
        return 2
    return int(bench.main(argv) or 0)


def _warn_if_busy(args: argparse.Namespace) -> machine.Load:
    """Measure the other processes' CPU use before timing (once the input is known good, so that bad
    input still gets its one-line error alone), and say so in one line if it is high."""
    load = machine.measure_load()
    warning = machine.busy_warning(load, args.threads or torch.get_num_threads())
    if warning:
        print(f"zeroskip: {warning}", file=sys.stderr)
    return load


def _missing_dependency(error: ImportError) -> bool:
    """An optional package is not installed (as opposed to a broken import inside zeroskip)."""
    return isinstance(error, ModuleNotFoundError) or isinstance(error.__cause__, ModuleNotFoundError)


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename!r}" if error.filename else error.strerror
    return str(error)


def main(argv: list[str] | None = None) -> int:
    """Run the ``zeroskip`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    # FFmpeg's and OpenCV's own warnings about damaged files would drown the one-line error.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    try:
        if args.command == "bench":
            return _bench(rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        summary, load = _demo(args) if args.command == "demo" else _video(args)
    except KeyboardInterrupt:
        print("zeroskip: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError) as error:
        if isinstance(error, ImportError) and not _missing_dependency(error):
            raise
        print(f"zeroskip: error: {_describe(error)}", file=sys.stderr)
        return 2
    if "streams" in summary:
        from .streams import format_summary

        print(format_summary(summary))
        return _streams_status(summary)
    print(video.format_summary(summary))
    print("\n".join(machine.speedup_notes(summary, load)))
    if not summary["outputs_agree"]:
        print(
            f"zeroskip: error: zeroskip's output differs from dense in batches {summary['mismatched_batches']}",
            file=sys.stderr,
        )
        return 1
    return 0


def _streams_status(summary: dict) -> int:
    """Exit code of a many-stream run, with one stderr line per problem: 1 if a stream failed or
    zeroskip differed from dense anywhere, else 0."""
    failed = [s["name"] for s in summary["streams"] if s["status"] == "failed"]
    if failed:
        print(f"zeroskip: error: {len(failed)} of {len(summary['streams'])} streams failed: {', '.join(failed)}"
              " (errors in summary.json)", file=sys.stderr)
    if not summary["outputs_agree"]:
        where = "; ".join(f"{m['stream']} batches {m['batches']}" for m in summary["mismatched"])
        print(f"zeroskip: error: zeroskip's output differs from dense in {where}", file=sys.stderr)
    return 1 if failed or not summary["outputs_agree"] else 0


if __name__ == "__main__":
    sys.exit(main())
