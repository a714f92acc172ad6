"""The video experiment: mask a static-camera clip, run a dense model and its zeroskip twin on the
same masked batches, check they agree, and write ``frames.csv``, ``summary.json`` and ``report.png``.

The comparison is fair by construction: both models see the very same masked batch, under
``torch.inference_mode()``, in alternating order (dense first on even batches, zeroskip first on odd
ones) so that neither always profits from a warm cache. The first batch is run once by both models,
untimed, before any timing.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from math import nan
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import __version__, _profiler
from ._geometry import check_conv_args
from .convert import sparsify_
from .engine.output import populate_for_reading
from .masking import SUBTRACTORS, BackgroundMasker, _cv2, frames_to_tensor
from .models import MODELS, build_model

COLUMNS = (
    "batch", "frames", "sparsity_before", "sparsity_after", "t_sparse", "t_orig",
    "active_fraction", "mode", "speedup", "max_abs_err",
)
SPARSE_MODES = ("auto", "rows", "tiles")
# torch.testing.assert_close's float32 tolerances: the library's definition of "equal to dense".
_RTOL, _ATOL = 1.3e-6, 1e-5


def _positive_int(value: object, name: str, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive int{' or None' if optional else ''}, got {value!r}")


@dataclass(frozen=True)
class Settings:
    """What to run: the CLI options of ``zeroskip video``.

    Attributes:
        batch_size: frames per batch; the last batch may be shorter.
        max_frames: stop after this many frames (``None``: the whole clip).
        subtractor: background subtractor, one of ``mog``, ``mog2``, ``knn``.
        model: a name in :data:`zeroskip.models.MODELS`.
        mode: zeroskip mode of every converted convolution: ``auto``, ``rows`` or ``tiles``.
        threads: ``torch.set_num_threads`` for the run (``None``: leave it as it is).
        seed: seed of the model weights.
    """

    batch_size: int = 16
    max_frames: int | None = None
    subtractor: str = "mog"
    model: str = "stem"
    mode: str = "auto"
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.max_frames, "max_frames", optional=True)
        _positive_int(self.threads, "threads", optional=True)
        if self.subtractor not in SUBTRACTORS:
            raise ValueError(f"`subtractor` must be one of {', '.join(SUBTRACTORS)}, got {self.subtractor!r}")
        if self.model not in MODELS:
            raise ValueError(f"`model` must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.mode not in SPARSE_MODES:
            raise ValueError(f"`mode` must be one of {', '.join(SPARSE_MODES)}, got {self.mode!r}")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a clip (``frame_count`` may be wrong for damaged files)."""

    path: str
    width: int
    height: int
    fps: float
    frame_count: int | None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: OpenCV's own AVI parser prints on it unconditionally when it
    probes a file that is not a video, which would garble the caller's one-line error."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no stderr at all
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def open_video(path: str | os.PathLike) -> tuple[Iterator[np.ndarray], VideoInfo]:
    """Open a video file and decode its first frame, so that bad input fails here and now.

    Returns:
        An iterator over the ``(H, W, 3)`` uint8 BGR frames (the first one included) and the
        clip's :class:`VideoInfo`.

    Raises:
        ValueError: ``path`` is missing, a directory, empty, unreadable, not a video OpenCV can
            open, or has no decodable frame.
    """
    text = os.fspath(path)
    if not os.path.exists(text):
        raise ValueError(f"`path` must be an existing video file, got {text!r} (no such file)")
    if os.path.isdir(text):
        raise ValueError(f"`path` must be a video file, got {text!r} (a directory)")
    try:
        with open(text, "rb") as handle:
            empty = not handle.read(1)
    except OSError as error:
        raise ValueError(f"`path` must be a readable video file, got {text!r} ({error.strerror})") from None
    if empty:
        raise ValueError(f"`path` must be a video file, got {text!r} (an empty file)")
    return open_capture(text, text, "path")


def open_capture(target: str | int, text: str, name: str) -> tuple[Iterator[np.ndarray], VideoInfo]:
    """Open anything ``cv2.VideoCapture`` opens (a file, a camera index, an ``rtsp://`` URL) and
    decode its first frame; errors name the argument ``name`` and show ``text``.

    Returns:
        An iterator over the ``(H, W, 3)`` uint8 BGR frames (the first one included) and the
        source's :class:`VideoInfo`.

    Raises:
        ValueError: OpenCV cannot open ``target`` or decode a first frame from it.
    """
    cv2 = _cv2()
    with _quiet_stderr():
        capture = cv2.VideoCapture(target)
        ok, first = capture.read() if capture.isOpened() else (False, None)
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"`{name}` must be a video file OpenCV can decode, got {text!r}")
    if not ok or first is None:
        capture.release()
        raise ValueError(f"`{name}` must hold at least one decodable frame, got {text!r}")
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    # Live sources report no count (0) or a negative one.
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    info = VideoInfo(text, first.shape[1], first.shape[0], fps, count if count > 0 else None)

    def frames() -> Iterator[np.ndarray]:
        try:
            frame = first
            while frame is not None:
                yield frame
                ok, frame = capture.read()
                frame = frame if ok else None
        finally:
            capture.release()

    return frames(), info


def _checked(frames: Iterable[np.ndarray], limit: int | None) -> Iterator[np.ndarray]:
    """The frames, at most ``limit`` of them, each checked to be uint8 BGR of the first one's size."""
    size = None
    for index, frame in enumerate(frames):
        if limit is not None and index >= limit:
            return
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"`frames` must be (H, W, 3) uint8 BGR images, got {got} at frame {index}")
        if size is None:
            size = frame.shape
        elif frame.shape != size:
            raise ValueError(
                f"`frames` must all have one size, got {size[1]}x{size[0]} at frame 0"
                f" and {frame.shape[1]}x{frame.shape[0]} at frame {index}"
            )
        yield frame


def _dense_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the dense convolution of one recorded call."""
    padding = module.padding if module.padding_mode == "zeros" else 0
    g = check_conv_args(
        torch.empty(input_shape, device="meta"), module.weight, None, module.stride, padding, module.dilation,
        module.groups,
    )
    return g.batch * g.out_channels * g.out_height * g.out_width * module.weight[0].numel()


def work_fraction(records: list[_profiler.CallRecord], model: nn.Module) -> float:
    """Fraction of the dense convolution work that the zeroskip run computed.

    Each call's ``active_fraction`` is weighted by the multiply-accumulates the dense convolution
    of that call costs, so a skipped 7x7 stem counts for more than a skipped 1x1 layer. Calls
    whose module cannot be found (functional calls) get the weight of an average call.
    """
    modules = dict(model.named_modules())
    weights = []
    for record in records:
        module = modules.get(record.name) if record.name is not None else None
        weights.append(_dense_macs(module, record.input_shape) if isinstance(module, nn.Conv2d) else None)
    known = [w for w in weights if w is not None]
    fallback = statistics.mean(known) if known else 1.0
    weights = [fallback if w is None else w for w in weights]
    total = sum(weights)
    return sum(w * r.active_fraction for w, r in zip(weights, records)) / total if total else 1.0


def mode_label(records: list[_profiler.CallRecord]) -> str:
    """What the zeroskip calls of one batch ran: ``"tiles"``, or counts like ``"tiles:12;dense:8"``."""
    counts = Counter(record.chosen for record in records)
    if len(counts) <= 1:
        return next(iter(counts), "none")
    return ";".join(f"{chosen}:{count}" for chosen, count in counts.most_common())


@dataclass
class BatchResult:
    """One row of ``frames.csv`` (times in seconds, sparsities in percent), plus the agreement check."""

    batch: int
    frames: int
    sparsity_before: float
    sparsity_after: float
    t_sparse: float
    t_orig: float
    active_fraction: float
    mode: str
    speedup: float
    max_abs_err: float
    agree: bool
    # Whether the model's outputs are feature maps (B, C, H, W), whose zeros mean something; a
    # classifier's logits have none.
    spatial: bool = True

    def csv_row(self) -> list[object]:
        return [
            self.batch, self.frames, f"{self.sparsity_before:.4f}", f"{self.sparsity_after:.4f}",
            f"{self.t_sparse:.6f}", f"{self.t_orig:.6f}", f"{self.active_fraction:.6f}", self.mode,
            f"{self.speedup:.4f}", f"{self.max_abs_err:.3e}",
        ]


def _timed(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    y = model(x)
    return y, time.perf_counter() - start


def _tensors(output: object) -> list[torch.Tensor]:
    """The tensors of a model's output: a tensor, or nested dicts, lists and tuples of them
    (segmentation models return ``{"out": ...}``)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []


def outputs_agree(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Whether zeroskip's output equals dense's within ``torch.testing.assert_close``'s float32
    tolerances, the absolute one scaled by the output's largest magnitude when that exceeds 1.

    Why scaled: a sum computed in another order (a tile instead of the whole image) differs by
    rounding errors proportional to the size of its terms, not of its result; through a deep
    network, outputs near zero that come from large terms differ by more than ``atol`` although
    nothing is wrong. For one layer on [0, 1] frames (the stem) the scale is about 1.
    """
    return bool(torch.allclose(actual, expected, **_tolerances(expected)))


def _tolerances(expected: torch.Tensor) -> dict[str, float]:
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    return {"rtol": _RTOL, "atol": _ATOL * scale}


def assert_outputs_agree(actual: object, expected: object) -> None:
    """:func:`outputs_agree` on every tensor of two model outputs (tensors, or dicts, lists and tuples
    of them), with ``torch.testing.assert_close``'s description of the first difference.

    Raises:
        AssertionError: the outputs differ in structure, shape, dtype or values.
    """
    pairs = list(zip(_tensors(actual), _tensors(expected)))
    if len(pairs) != len(_tensors(expected)) or len(pairs) != len(_tensors(actual)):
        raise AssertionError(f"the outputs hold {len(_tensors(actual))} and {len(_tensors(expected))} tensors")
    for index, (a, e) in enumerate(pairs):
        try:
            torch.testing.assert_close(a, e, **_tolerances(e))
        except AssertionError as error:
            raise AssertionError(f"output tensor {index}: {error}") from None


@dataclass
class ModelRun:
    """Both models (or one) timed on one batch ``x`` ``(B, C, H, W)``, and their outputs.

    Attributes:
        index: the batch's number.
        x: the batch.
        y_sparse: zeroskip's output, ``None`` when only dense ran.
        y_dense: dense's output, ``None`` when only zeroskip ran.
        t_sparse: zeroskip's time in seconds (NaN when it did not run).
        t_orig: dense's time in seconds (NaN when it did not run).
        active_fraction: fraction of the dense work zeroskip computed (1.0 when it did not run).
        mode: :func:`mode_label` of zeroskip's calls.
    """

    index: int
    x: torch.Tensor
    y_sparse: object
    y_dense: object
    t_sparse: float
    t_orig: float
    active_fraction: float
    mode: str

    def result(self, rows: slice = slice(None)) -> BatchResult:
        """The :class:`BatchResult` of the images ``rows`` of the batch (every model output's first
        dimension is the batch), with the batch's times shared in proportion to their number.

        ``sparsity_after`` is the percentage of zero values in the dense output (all its tensors),
        or in zeroskip's when dense did not run; with one model, nothing is compared
        (``max_abs_err`` NaN, ``agree`` true).
        """
        x = self.x[rows]
        share = x.shape[0] / self.x.shape[0]
        sparse = [t[rows] for t in _tensors(self.y_sparse)]
        dense = [t[rows] for t in _tensors(self.y_dense)]
        reference = dense if self.y_dense is not None else sparse
        for output in sparse:
            populate_for_reading(output)  # its skipped pages: mapped at once, not a fault each below
        pairs = list(zip(sparse, dense))
        error = max((float((a - b).abs().max()) for a, b in pairs if b.numel()), default=0.0) if pairs else nan
        zeros = sum(b.numel() - int(torch.count_nonzero(b)) for b in reference)
        t_sparse, t_orig = share * self.t_sparse, share * self.t_orig
        return BatchResult(
            batch=self.index,
            frames=x.shape[0],
            sparsity_before=100.0 * (1.0 - int(torch.count_nonzero(x)) / max(1, x.numel())),
            sparsity_after=100.0 * zeros / max(1, sum(b.numel() for b in reference)),
            t_sparse=t_sparse,
            t_orig=t_orig,
            active_fraction=self.active_fraction,
            mode=self.mode,
            speedup=t_orig / t_sparse if t_sparse > 0 else float("inf"),
            max_abs_err=error,
            agree=all(outputs_agree(a, b) for a, b in pairs),
            spatial=all(b.ndim == 4 for b in reference),
        )


def run_models(index: int, x: torch.Tensor, dense: nn.Module | None, sparse: nn.Module | None) -> ModelRun:
    """Time ``dense`` and ``sparse`` (either may be ``None``: not run) on the same batch ``x``
    ``(B, C, H, W)``, dense first on even batches and zeroskip first on odd ones."""
    y_dense = y_sparse = None
    t_orig = t_sparse = nan
    with torch.inference_mode():
        with _profiler.profile() as prof:
            if dense is not None and (index % 2 == 0 or sparse is None):
                y_dense, t_orig = _timed(dense, x)
            if sparse is not None:
                y_sparse, t_sparse = _timed(sparse, x)
            if dense is not None and y_dense is None:
                y_dense, t_orig = _timed(dense, x)
    return ModelRun(
        index, x, y_sparse, y_dense, t_sparse, t_orig,
        work_fraction(prof.records, sparse) if sparse is not None else 1.0, mode_label(prof.records),
    )


def measure_batch(index: int, x: torch.Tensor, dense: nn.Module, sparse: nn.Module) -> BatchResult:
    """Time ``dense`` and ``sparse`` on the same batch ``x`` ``(B, C, H, W)`` and compare their outputs
    (see :meth:`ModelRun.result`)."""
    return run_models(index, x, dense, sparse).result()


class Outputs:
    """The output files of a run: one or more ``frames.csv`` tables (``tables``, paths relative to
    ``out``, e.g. ``"cam1/frames.csv"``), ``summary.json`` and ``report.png``. All are written under
    temporary names and renamed into place only when all of them are complete; on failure the
    temporary files (and any directory made for them) are removed, so a run leaves either all of
    its files or none.

    Raises:
        ValueError: ``out`` (or a directory below it) cannot be created or written.
    """

    def __init__(self, out: str | os.PathLike, tables: Iterable[str] = ("frames.csv",)) -> None:
        self.directory = Path(out)
        self._created: list[Path] = []
        self._temps: dict[str, Path] = {}
        self._files: dict[str, object] = {}
        self._writers: dict[str, object] = {}
        try:
            for table in tables:
                self._make_directory((self.directory / table).parent)
                handle = self._files[table] = open(self._temp(table), "w", newline="")
                self._writers[table] = csv.writer(handle)
                self._writers[table].writerow(COLUMNS)
        except OSError as error:
            self.discard()
            raise ValueError(f"`out` must be a writable directory, got {str(out)!r} ({_reason(error)})") from None

    def _make_directory(self, directory: Path) -> None:
        missing = []
        parent = directory
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        directory.mkdir(parents=True, exist_ok=True)
        # Deepest first, the order in which discard() can remove them.
        self._created = missing + self._created

    def _temp(self, name: str) -> Path:
        # Not tempfile.mkstemp: its files are private (0600); these keep the umask's permissions.
        target = self.directory / name
        temp = target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        temp.open("x").close()
        self._temps[name] = temp
        return temp

    def add_row(self, result: BatchResult, table: str = "frames.csv") -> None:
        self._writers[table].writerow(result.csv_row())
        self._files[table].flush()

    def commit(self, summary: dict, write_report: Callable[[Path], None]) -> dict[str, str]:
        """Finish the tables, write the summary and the report, and move every file into place.

        Returns:
            The final path of every file, by its name relative to ``out``.
        """
        for handle in self._files.values():
            handle.close()
        with open(self._temp("summary.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
            handle.write("\n")
        write_report(self._temp("report.png"))
        paths = {}
        for name in [*self._files, "summary.json", "report.png"]:
            os.replace(self._temps.pop(name), self.directory / name)
            paths[name] = str(self.directory / name)
        return paths

    def discard(self) -> None:
        for handle in self._files.values():
            handle.close()
        for temp in self._temps.values():
            temp.unlink(missing_ok=True)
        self._temps.clear()
        for directory in self._created:
            try:
                directory.rmdir()
            except OSError:
                pass


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def environment() -> dict[str, object]:
    """Versions, threads, CPU, load and commit, to tell later readers where the numbers come from."""
    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "zeroskip": __version__,
        "torch": torch.__version__,
        "opencv": _cv2().__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # Other processes competing for the cores make timings, notably multi-threaded ones, noisy.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_modified": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _git(*args: str) -> str | None:
    """Output of a git command run in zeroskip's source tree, ``None`` outside a checkout."""
    try:
        result = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _summarize(
    results: list[BatchResult], settings: Settings, source: dict, frame_size: tuple[int, int], env: dict
) -> dict:
    t_sparse = sum(r.t_sparse for r in results)
    t_orig = sum(r.t_orig for r in results)

    def median(field: str) -> float:
        return statistics.median(getattr(r, field) for r in results)

    return {
        "source": {**source, "frame_width": frame_size[1], "frame_height": frame_size[0]},
        "settings": asdict(settings),
        "totals": {
            "frames": sum(r.frames for r in results),
            "batches": len(results),
            "t_sparse": t_sparse,
            "t_orig": t_orig,
        },
        "medians": {
            field: median(field)
            for field in ("sparsity_before", "sparsity_after", "active_fraction", "t_sparse", "t_orig", "speedup")
        },
        "speedup": t_orig / t_sparse if t_sparse > 0 else float("inf"),
        "max_abs_err": max(r.max_abs_err for r in results),
        "outputs_agree": all(r.agree for r in results),
        "mismatched_batches": [r.batch for r in results if not r.agree],
        "environment": env,
    }


def run(
    frames: Iterable[np.ndarray],
    settings: Settings,
    out: str | os.PathLike,
    *,
    source: dict | None = None,
    total: int | None = None,
    progress: bool = True,
) -> dict:
    """Run the experiment on ``frames`` and write ``frames.csv``, ``summary.json`` and ``report.png``.

    Args:
        frames: ``(H, W, 3)`` uint8 BGR frames of one size, e.g. from :func:`open_video`.
        settings: what to run.
        out: output directory, created if missing.
        source: description of the clip, stored in the summary.
        total: expected frame count, for the progress bar; ``None`` if unknown.
        progress: show a progress bar on stderr (when stderr is a terminal).

    Returns:
        The summary (as written to ``summary.json``), plus ``"outputs"``: the written paths.

    Raises:
        ValueError: bad settings, bad frames, no frame at all, or an unwritable ``out``.
        OSError: a write failed midway. Nothing is left in ``out`` on any error.
    """
    from tqdm import tqdm

    from .report import write_report

    if not isinstance(settings, Settings):
        raise TypeError(f"`settings` must be a zeroskip.video.Settings, got {type(settings).__name__}")
    dense = build_model(settings.model, settings.seed)
    sparse = sparsify_(copy.deepcopy(dense), mode=settings.mode)
    masker = BackgroundMasker(settings.subtractor)
    if total is not None and settings.max_frames is not None:
        total = min(total, settings.max_frames)
    previous_threads = torch.get_num_threads()
    outputs = Outputs(out)
    try:
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        # Taken before the work: the code, threads and load the timings come from.
        env = environment()
        results: list[BatchResult] = []
        batch: list[np.ndarray] = []
        sample = None  # (frame number, masked frame, non-zero values): the run's most active frame
        # disable=None: a bar on a terminal, nothing in logs and pipes.
        bar = tqdm(total=total, unit="frame", desc="zeroskip", file=sys.stderr, disable=None if progress else True)
        with bar:
            for index, frame in enumerate(_checked(frames, settings.max_frames)):
                batch.append(masker(frame))
                sample = most_active(sample, index, batch[-1])
                bar.update(1)
                if len(batch) == settings.batch_size:
                    results.append(_process(batch, len(results), dense, sparse, outputs))
                    bar.set_postfix(speedup=f"{results[-1].speedup:.2f}x", refresh=False)
                    batch = []
            if batch:
                results.append(_process(batch, len(results), dense, sparse, outputs))
        if not results:
            raise ValueError("`frames` must hold at least one frame, got none")
        summary = _summarize(results, settings, source or {}, sample[1].shape[:2], env)
        summary["outputs"] = outputs.commit(
            summary, lambda path: write_report(path, results, summary, sample[1], sample[0], sparse)
        )
        return summary
    except BaseException:
        outputs.discard()
        raise
    finally:
        torch.set_num_threads(previous_threads)


def most_active(
    best: tuple[int, np.ndarray, int] | None, index: int, frame: np.ndarray
) -> tuple[int, np.ndarray, int]:
    """``(index, frame, non-zero values)`` of whichever of ``best`` and this masked frame has more
    non-zero values (the earlier on a tie): the report shows it, where zeroskip has most to do."""
    count = int(np.count_nonzero(frame))
    return best if best is not None and best[2] >= count else (index, frame, count)


def _process(frames: list[np.ndarray], index: int, dense: nn.Module, sparse: nn.Module, outputs: Outputs):
    x = frames_to_tensor(frames)
    if index == 0:
        # Untimed warm-up: first calls pay for allocator growth and kernel selection.
        with torch.inference_mode():
            dense(x)
            sparse(x)
    result = measure_batch(index, x, dense, sparse)
    outputs.add_row(result)
    return result


def format_summary(summary: dict) -> str:
    """The short table printed at the end of a run."""
    totals, medians, settings = summary["totals"], summary["medians"], summary["settings"]
    batches = totals["batches"]
    agreement = (
        f"all {batches} batches agree with dense"
        if summary["outputs_agree"]
        else f"{len(summary['mismatched_batches'])} of {batches} batches DIFFER from dense"
    )
    lines = [
        f"{totals['frames']} frames in {batches} batches of up to {settings['batch_size']};"
        f" model {settings['model']}, mode {settings['mode']}, subtractor {settings['subtractor']},"
        f" torch threads: {summary['environment']['torch_threads']}",
        f"{'':<26}{'dense':>12}{'zeroskip':>12}",
        f"{'total time (s)':<26}{totals['t_orig']:>12.3f}{totals['t_sparse']:>12.3f}",
        f"{'median per batch (ms)':<26}{1e3 * medians['t_orig']:>12.1f}{1e3 * medians['t_sparse']:>12.1f}",
        f"speed-up: {summary['speedup']:.2f}x overall, {medians['speedup']:.2f}x median per batch",
        f"input: median {medians['sparsity_before']:.1f}% zero; zeroskip computed a median"
        f" {100 * medians['active_fraction']:.1f}% of the dense work",
        f"max |zeroskip - dense|: {summary['max_abs_err']:.3g} ({agreement})",
    ]
    announced = summary["source"].get("frame_count")
    limit = settings["max_frames"]
    expected = min(announced, limit) if announced and limit else announced
    if expected and totals["frames"] < expected:
        lines.append(
            f"note: the file announces {announced} frames but only {totals['frames']} could be decoded"
        )
    lines.extend(f"wrote {path}" for path in summary["outputs"].values())
    return "\n".join(lines)
