"""The benchmark suite behind ``zeroskip bench``: dense ``F.conv2d`` against zeroskip on masked video,
on synthetic densities, on inner layers and through whole networks, with the speed targets of the
project checked.

Every comparison runs its functions (dense, zeroskip, and writing the output once) in one process,
alternating block by block after a warm-up; each figure is the median over the blocks, with the
interquartile range as its spread. Threads are set and recorded, seeds are pinned, glibc's heap is
kept warm (see :func:`pin_timing_heap`), and the machine, the allocator state, the torch version and
the zeroskip commit are written next to the numbers. ``benchmarks/README.md`` describes the method
in full.

Writes ``results.json``, ``results.md`` and ``results.png`` under ``--out``, each atomically, and only
once every workload has finished.

One concern per module: :mod:`.timing` (timed blocks, threads), :mod:`.heap` (glibc's heap, peak
memory), :mod:`.frames` (inputs), :mod:`.rows` and :mod:`.networks` (one comparison each),
:mod:`.workloads` (W1-W5 and their registry), :mod:`.breakdown`, :mod:`.peer` (spconv),
:mod:`.targets`, :mod:`.metadata`, :mod:`.report` and :mod:`.plot` (the result files),
:mod:`.runner` (a whole run) and :mod:`.command` (the command line).
"""

from __future__ import annotations

from .breakdown import BREAKDOWN_STEPS
from .command import build_parser, main, settings_from_args
from .frames import blob_frame, masked_frames, pattern_frame, raw_frames, video_frames
from .heap import peak_memory, pin_malloc, pin_timing_heap
from .networks import network_row, stage_fractions, stages
from .output import OUTPUT_NAMES
from .plot import render_plot
from .report import render_markdown
from .rows import active_fraction, original_layer, speed_row
from .runner import run
from .settings import DEFAULT_OUT, DEFAULT_VIDEO, Context, Settings
from .targets import evaluate_targets
from .timing import Timing, measure
from .workloads import WORKLOADS, Workload

__all__ = [
    "BREAKDOWN_STEPS", "DEFAULT_OUT", "DEFAULT_VIDEO", "OUTPUT_NAMES", "WORKLOADS", "Context", "Settings", "Timing",
    "Workload", "active_fraction", "blob_frame", "build_parser", "evaluate_targets", "main",
    "masked_frames", "measure", "network_row", "original_layer", "pattern_frame", "peak_memory",
    "pin_malloc", "pin_timing_heap", "raw_frames", "render_markdown", "render_plot", "run", "settings_from_args",
    "speed_row", "stage_fractions", "stages", "video_frames",
]
