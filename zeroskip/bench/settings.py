"""What one run of the suite does (:class:`Settings`) and the state its workloads share (:class:`Context`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .frames import masked_frames

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


@dataclass(frozen=True)
class Settings:
    """What one run of the suite does. :func:`main` builds it from the command line.

    Attributes:
        out: directory for ``results.json``, ``results.md`` and ``results.png``.
        workloads: keys of :data:`WORKLOADS` to run, in order.
        quick: the reduced variant (recorded; the other fields already carry its reductions).
        threads: ``torch.set_num_threads`` for the whole run.
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
        peer: time spconv next to W1 when it is installed.
        memory: measure peak memory.
        note: free text stored with the results (e.g. "provisional run on a busy machine").
    """

    out: Path = DEFAULT_OUT
    workloads: tuple[str, ...] = ("W1", "W2", "W3", "W4", "W5")
    quick: bool = False
    threads: int = 2
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
        }
        return cls(**{**base, **overrides})


@dataclass
class Context:
    """State shared by the workloads of one run."""

    settings: Settings
    memory_cases: list[tuple[dict, Callable[[], None], Callable[[], None]]] = field(default_factory=list)
    _frames: torch.Tensor | None = None

    def frames(self) -> torch.Tensor:
        """The masked benchmark window of the video, ``(frames, 3, H, W)``."""
        if self._frames is None:
            self._frames = masked_frames(self.settings.video, self.settings.frames, self.settings.first_frame)
        return self._frames

    def log(self, line: str) -> None:
        print(line, flush=True)
