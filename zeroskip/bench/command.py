"""``zeroskip bench``: the command line of the suite."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .heap import HEAP_MODES
from .output import OUTPUT_NAMES
from .runner import run
from .settings import DEFAULT_OUT, DEFAULT_VIDEO, Settings
from .workloads import WORKLOADS


def _positive(kind: type, name: str) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value <= 0:
            raise argparse.ArgumentTypeError(f"`{name}` must be a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def _thread_list(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) <= 0:
        raise argparse.ArgumentTypeError(f"`--threads` must be a comma list of positive ints, got {text!r}")
    return tuple(dict.fromkeys(counts))


def _name_list(option: str, allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """Parse a comma list of ``allowed`` names (any case); the result in ``allowed``'s order when
    ``option`` is ``--heap`` (the heap modes must run in that order), else as given."""

    def parse(text: str) -> tuple[str, ...]:
        by_key = {name.upper(): name for name in allowed}
        names = tuple(by_key.get(part.strip().upper(), "") for part in text.split(",") if part.strip())
        if not names or "" in names:
            raise argparse.ArgumentTypeError(f"`{option}` must be a comma list of {', '.join(allowed)}, got {text!r}")
        names = tuple(dict.fromkeys(names))
        return tuple(name for name in allowed if name in names) if option == "--heap" else names

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2
        # Our own messages already name the option: drop argparse's "argument --x: " prefix.
        raise _UsageError(re.sub(r"^argument [^:]+: (?=`)", "", message))


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zeroskip bench", description="Benchmark zeroskip against dense convolution.")
    parser.add_argument("--quick", action="store_true", help="the reduced run: batch 1, fewer frames and repeats")
    parser.add_argument("--threads", type=_thread_list, default=(1, 2),
                        help="comma list of torch thread counts, each workload runs at every one (default 1,2)")
    parser.add_argument("--heap", type=_name_list("--heap", HEAP_MODES), default=HEAP_MODES,
                        help="comma list of heap modes: default (glibc as users get it), pinned (warm, for noise"
                             " control); default both")
    parser.add_argument("--no-contention", action="store_true",
                        help="skip the runs of W1, W2 and W5 beside a competing busy process")
    parser.add_argument("--contention-threads", type=_positive(int, "--contention-threads"), default=None,
                        help="torch threads beside the busy process (default: torch's default here)")
    parser.add_argument("--out", type=Path, default=None, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--workloads", type=_name_list("--workloads", tuple(WORKLOADS)), default=None,
                        help=f"comma list of {', '.join(WORKLOADS)} (default all)")
    parser.add_argument("--repeats", type=_positive(int, "--repeats"), default=None,
                        help="timed blocks per function (default 11, 5 with --quick; W5: 8, 4 with --quick)")
    parser.add_argument("--video", type=Path, default=None, help=f"the vtest clip (default {DEFAULT_VIDEO})")
    parser.add_argument("--no-peer", action="store_true", help="skip the spconv peer")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--note", default="", help="text stored with the results, e.g. 'provisional run'")
    return parser


def _has_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed arguments, checked so that a run cannot fail on them halfway.

    Without torchvision, the default run leaves out the workloads that need it (W5, W6).

    Raises:
        ValueError: a workload needs the video and none is found, OpenCV is missing, or torchvision
            is missing for a workload asked for by name.
    """
    workloads = args.workloads or tuple(WORKLOADS)
    if not _has_module("torchvision"):
        needing = ", ".join(name for name in WORKLOADS if WORKLOADS[name].needs_models)
        if args.workloads is None:  # the default run goes on without them
            print(f"zeroskip bench: {needing} skipped: torchvision is not installed (pip install 'zeroskip[models]')",
                  file=sys.stderr)
            workloads = tuple(name for name in workloads if not WORKLOADS[name].needs_models)
        elif any(WORKLOADS[name].needs_models for name in workloads):
            raise ValueError(f"`--workloads` {needing} need torchvision (pip install 'zeroskip[models]'),"
                             f" got {','.join(workloads)}")
    video = args.video if args.video is not None else DEFAULT_VIDEO
    if any(WORKLOADS[name].needs_video for name in workloads):
        if not video.is_file():
            raise ValueError(f"`--video` must be an existing file (vtest.avi), got {str(video)!r}")
        if not _has_module("cv2"):
            needing = ", ".join(name for name in WORKLOADS if WORKLOADS[name].needs_video)
            raise ValueError(f"`--workloads` {needing} need OpenCV (pip install 'zeroskip[video]'),"
                             f" got {','.join(workloads)}")
    out = args.out if args.out is not None else DEFAULT_OUT
    existing = next(parent for parent in (out, *out.absolute().parents) if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"`--out` must be a writable directory, got {str(out)!r}")
    options = {"out": out, "workloads": workloads, "threads": args.threads, "heaps": args.heap,
               "contention": not args.no_contention, "contention_threads": args.contention_threads, "video": video,
               "peer": not args.no_peer, "memory": not args.no_memory, "note": args.note}
    if args.repeats is not None:
        options["repeats"] = options["network_repeats"] = args.repeats
    return Settings.quick_variant(**options) if args.quick else Settings(**options)


def main(argv: list[str] | None = None) -> int:
    """``zeroskip bench``: run the suite. Returns the exit status (2 on bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        settings = settings_from_args(args)
    except (_UsageError, ValueError) as error:
        print(f"zeroskip bench: error: {error}", file=sys.stderr)
        return 2
    results = run(settings)
    width = max(len(t["target"]) for t in results["targets"])
    print(f"\ntargets ({'quick run' if settings.quick else 'full run'}, {results['elapsed_s']:.0f} s):")
    for target in results["targets"]:
        where = f"{target['threads']}t {target['heap']}" if target["threads"] else "-"
        print(f"  {target['status']:<8} {target['target']:<{width}}  {where:<11} {target['shown']}")
    print("wrote " + ", ".join(str(settings.out / name) for name in OUTPUT_NAMES if (settings.out / name).exists()))
    return 0


