"""What one run of the suite does (:class:`Settings`) and the state its workloads share (:class:`Context`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .frames import masked_frames
from .heap import HEAP_MODES

# The checkout (or site-packages) holding the ``zeroskip`` package.
REPO = Path(__file__).resolve().parents[2]
# A source checkout (editable install) writes into the repository, where the results are committed.
_IN_REPO = (REPO / "benchmarks").is_dir() and (REPO / "pyproject.toml").is_file()
DEFAULT_OUT = REPO / "benchmarks" / "results" if _IN_REPO else Path("zeroskip-bench")
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "vtest.avi"

# Pixel densities of the synthetic sweep (W3), and the row-band and scattered-dot patterns beside it.
DENSITIES = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
QUICK_DENSITIES = (0.0, 0.01, 0.05, 0.2, 1.0)
PATTERNS = (("bands", 0.1), ("bands", 0.4), ("dots", 0.002))
QUICK_PATTERNS = (("bands", 0.1),)

# Whole-network models (W5): every one on the masked and the unmasked frames, these also at 1080p.
NETWORK_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "fcn_resnet50")
NETWORK_HD_MODELS = ("resnet18", "resnet50")


def _registered() -> tuple[str, ...]:
    from .workloads import WORKLOADS  # the registry imports this module

    return tuple(WORKLOADS)


@dataclass(frozen=True)
class Settings:
    """What one run of the suite does. :func:`main` builds it from the command line.

    Attributes:
        out: directory for ``results.json``, ``results.md`` and ``results.png``.
        workloads: keys of :data:`WORKLOADS` to run, in order (default: every registered one).
        quick: the reduced variant (recorded; the other fields already carry its reductions).
        threads: thread counts (``torch.set_num_threads``) every workload runs at, on a quiet machine.
        heaps: heap modes (:data:`~zeroskip.bench.heap.HEAP_MODES`) every workload runs in: ``"default"``
            (glibc as users get it), ``"pinned"`` (kept warm, for noise control).
        contention: also run the workloads that have a contention case beside a busy process, at
            ``contention_threads``.
        contention_threads: threads beside the busy process; ``None``: torch's default when the run starts.
        contention_limit_s: the busy process ends by itself after this long, whatever happens to the suite.
        repeats: timed blocks per function.
        min_block_s: a block repeats a call until it lasts at least this long.
        video: the clip W1, W2 and W4 mask (vtest.avi).
        first_frame: start of the benchmark window; the frames before it train the background subtractor.
        frames: frames in the benchmark window; batch 1 runs each of them in turn.
        hd_frames: frames of the window used at 1080p (W2) for batch 1.
        batches: batch sizes of W1 and W2.
        hd_size: ``(H, W)`` W2 resizes the frames to.
        sweep_size: ``(H, W)`` of the synthetic W3 frames.
        densities: W3 blob densities.
        patterns: W3 extra patterns, ``(kind, density)`` with kind ``"bands"`` or ``"dots"``.
        network_models: W5 models (:data:`zeroskip.models.MODELS`), each on masked and unmasked frames.
        network_hd_models: W5 models also run on the masked frames resized to ``hd_size``.
        network_frames: frames of the window W5 cycles through (batch 1), each checked against dense.
        network_repeats: timed blocks per function in W5 (a network call is long), rounded up to a multiple
            of ``network_frames`` so that every frame is timed equally often.
        stream_frames: frames per stream of W6's stem runs (16 streams).
        stream_size: ``(H, W)`` of W6's synthetic streams (vtest's size, so that all streams batch together).
        stream_network_frames: frames per stream of W6's resnet18 runs.
        peer: time spconv next to W1 when it is installed.
        memory: measure peak memory.
        note: free text stored with the results (e.g. "provisional run on a busy machine").
    """

    out: Path = DEFAULT_OUT
    workloads: tuple[str, ...] = field(default_factory=_registered)
    quick: bool = False
    threads: tuple[int, ...] = (1, 2)
    heaps: tuple[str, ...] = HEAP_MODES
    contention: bool = True
    contention_threads: int | None = None
    contention_limit_s: float = 3600.0
    repeats: int = 11
    min_block_s: float = 0.1
    video: Path | None = None
    first_frame: int = 100
    frames: int = 16
    hd_frames: int = 16
    batches: tuple[int, ...] = (1, 16)
    hd_size: tuple[int, int] = (1080, 1920)
    sweep_size: tuple[int, int] = (576, 768)
    densities: tuple[float, ...] = DENSITIES
    patterns: tuple[tuple[str, float], ...] = PATTERNS
    network_models: tuple[str, ...] = NETWORK_MODELS
    network_hd_models: tuple[str, ...] = NETWORK_HD_MODELS
    network_frames: int = 4
    network_repeats: int = 8
    stream_frames: int = 32
    stream_size: tuple[int, int] = (576, 768)
    stream_network_frames: int = 4
    peer: bool = True
    memory: bool = True
    note: str = ""

    @classmethod
    def quick_variant(cls, **overrides: object) -> Settings:
        """The ``--quick`` settings: fewer repeats, frames and densities, batch 1 only, ResNet-18 only."""
        base = {
            "quick": True, "repeats": 5, "min_block_s": 0.03, "frames": 8, "hd_frames": 3, "batches": (1,),
            "densities": QUICK_DENSITIES, "patterns": QUICK_PATTERNS, "network_models": ("resnet18",),
            "network_hd_models": ("resnet18",), "network_frames": 2, "network_repeats": 4,
            "stream_frames": 8, "stream_network_frames": 1,
        }
        return cls(**{**base, **overrides})


@dataclass(frozen=True)
class Config:
    """The conditions one workload run is timed in: thread count, heap mode, and whether a busy process
    competes (``load`` ``"busy"``) or not (``"quiet"``). Recorded in every row."""

    threads: int
    heap: str
    load: str = "quiet"

    def label(self) -> str:
        """``2 threads, default heap, busy``."""
        return f"{self.threads} thread{'s' * (self.threads > 1)}, {self.heap} heap" + (
            ", busy" if self.load == "busy" else "")


@dataclass
class Context:
    """State shared by the workloads of one run, and the :class:`Config` the current workload runs in."""

    settings: Settings
    config: Config = Config(1, "pinned")
    memory_cases: list[tuple[dict, Callable[[], None], Callable[[], None]]] = field(default_factory=list)
    _frames: torch.Tensor | None = None

    @property
    def measures_extras(self) -> bool:
        """Whether this run also measures what needs one run per thread count (peak memory, which sets
        the heap itself; the spconv peer): quiet, in the run's last heap mode (pinned when it runs)."""
        return self.config.load == "quiet" and self.config.heap == self.settings.heaps[-1]

    def queue_memory(self, row: dict, dense: Callable[[], None], sparse: Callable[[], None]) -> None:
        """Queue ``row``'s case for peak memory, measured after all timing at the row's thread count
        (when :attr:`measures_extras`)."""
        if self.measures_extras:
            self.memory_cases.append((row, dense, sparse))

    def frames(self) -> torch.Tensor:
        """The masked benchmark window of the video, ``(frames, 3, H, W)``."""
        if self._frames is None:
            self._frames = masked_frames(self.settings.video, self.settings.frames, self.settings.first_frame)
        return self._frames

    def log(self, line: str) -> None:
        print(line, flush=True)
