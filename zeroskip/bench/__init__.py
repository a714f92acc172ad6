"""The benchmark suite behind ``zeroskip bench``: dense ``F.conv2d`` against zeroskip on masked video,
on synthetic densities, on inner layers and through whole networks, with the speed targets of the
project checked.

Every comparison runs its functions (dense, zeroskip, and writing the output once) in one process,
alternating block by block after a warm-up; each figure is the median over the blocks, with the
interquartile range as its spread. Every workload runs at each thread count (1 and 2 by default) in
each heap mode (glibc's default heap, as users get it, and the heap kept warm, see :func:`use_heap`);
W1, W2 and W5 also beside a competing busy process (:mod:`.contention`). Seeds are pinned, and the
machine, the allocator states, the load, the torch version and the zeroskip commit are written next
to the numbers. ``benchmarks/README.md`` describes the method
in full.

Writes ``results.json``, ``results.md`` and ``results.png`` under ``--out``, each atomically, and only
once every workload has finished.

One concern per module: :mod:`.timing` (timed blocks, threads), :mod:`.heap` (glibc's heap, peak
memory), :mod:`.contention` (the busy process, load), :mod:`.frames` (inputs), :mod:`.settings`
(settings, configurations), :mod:`.rows` and :mod:`.networks` (one comparison each),
:mod:`.workloads` (W1-W5 and their registry), :mod:`.breakdown`, :mod:`.peer` (spconv),
:mod:`.targets`, :mod:`.metadata`, :mod:`.report` and :mod:`.plot` (the result files),
:mod:`.runner` (a whole run) and :mod:`.command` (the command line).
"""

from __future__ import annotations

from .breakdown import STAGE_ORDER
from .command import build_parser, main, settings_from_args
from .frames import blob_frame, masked_frames, pattern_frame, raw_frames, video_frames
from .heap import HEAP_MODES, peak_memory, pin_malloc, pin_timing_heap, use_heap
from .networks import network_row, stage_fractions, stages
from .output import OUTPUT_NAMES
from .plot import render_plot
from .report import render_markdown
from .rows import active_fraction, original_layer, speed_row
from .runner import run
from .settings import DEFAULT_OUT, DEFAULT_VIDEO, Config, Context, Settings
from .targets import evaluate_targets
from .timing import Timing, measure
from .workloads import WORKLOADS, Workload

__all__ = [
    "DEFAULT_OUT", "DEFAULT_VIDEO", "HEAP_MODES", "OUTPUT_NAMES", "STAGE_ORDER", "WORKLOADS", "Config", "Context",
    "Settings", "Timing", "Workload", "active_fraction", "blob_frame", "build_parser", "evaluate_targets", "main",
    "masked_frames", "measure", "network_row", "original_layer", "pattern_frame", "peak_memory", "pin_malloc",
    "pin_timing_heap", "raw_frames", "render_markdown", "render_plot", "run", "settings_from_args", "speed_row",
    "stage_fractions", "stages", "use_heap", "video_frames",
]
