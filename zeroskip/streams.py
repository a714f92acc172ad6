"""Many cameras in one run: every stream masked ahead of the model in other threads, frames of all
streams batched into one model call, results sent back to their stream in order.

Sparsity is decided per image, so one batch may mix frames of different cameras freely: batching
across streams gives live video, which arrives one frame at a time per camera, the speed-up of large
batches. Each stream keeps its own background subtractor, frame counter and output rows.

Decoding and background subtraction run in a thread per stream (OpenCV releases the GIL), at most
``depth`` frames ahead per stream, so that memory stays bounded; subtractions run on the cores that
the model's calls do not hold. A stream that ends, stalls or breaks never holds the others up: a
batch leaves when it is full, or ``max_wait`` seconds after its first frame when no more frames come.

Outputs under ``out``: ``<stream name>/frames.csv`` per stream (the columns of
:data:`zeroskip.video.COLUMNS`, one row per batch the stream took part in, its times the stream's
share of the batch's), one ``summary.json`` and one ``report.png``; all or nothing, as for one clip.
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from math import isnan, nan
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import video
from .convert import sparsify_
from .machine import usable_cores
from .masking import BackgroundMasker, frames_to_tensor
from .models import build_model
from .sources import Source, resolve, unique_names

MODELS_RUN = ("both", "zeroskip", "dense")


@dataclass
class BatchDone:
    """One model call over frames of several streams.

    Attributes:
        index: the batch's number (per worker under Ray).
        rows: ``(stream name, its row)`` for every stream with frames in the batch, in stream order.
        check_s: seconds spent comparing outputs and computing the rows.
        worker: the Ray worker that ran it (``None`` in process).
    """

    index: int
    rows: list[tuple[str, video.BatchResult]]
    check_s: float
    worker: int | None = None


@dataclass
class Progress:
    """``frames`` more frames of stream ``name`` went through (fewer, if negative: a dead Ray worker's)."""

    name: str
    frames: int


@dataclass
class StreamDone:
    """A stream ended (``error`` is ``None``) or failed; every row of it was sent before."""

    name: str
    frames: int
    info: dict | None
    error: str | None
    decode_s: float
    subtract_s: float
    worker: int | None = None
    attempts: int = 1


@dataclass
class EngineDone:
    """The engine ran out of streams.

    Attributes:
        wait_s: seconds the model waited for frames (decoding and subtraction did not keep up).
        sample: ``(stream name, frame number, masked frame)`` with the most non-zero values of the
            run, for the report; ``None`` without frames.
    """

    wait_s: float
    sample: tuple[str, int, np.ndarray] | None
    worker: int | None = None


class _Cores:
    """The cores a run may use, shared by the model's calls and the prefetch's subtractions.

    A subtraction beside a model call that uses every core makes the model's threads wait for each
    other at every parallel region, one of them descheduled (on 2 cores, the zeroskip model in the
    pipeline took 4 times the CPU time it takes alone). So a call holds as many cores as it has
    torch threads and the subtractions take the others, or all of them while the model waits for
    frames. A model call that waits for its cores gets them before any other subtraction starts.

    Args:
        total: the cores to share.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._model_waits = False
        self._cond = threading.Condition()

    @contextmanager
    def model(self, threads: int) -> Iterator[None]:
        """Hold ``threads`` cores (all of them at most) while a model call runs."""
        count = min(threads, self.total)
        with self._cond:
            self._model_waits = True
            self._cond.wait_for(lambda: self._free >= count)
            self._model_waits = False
            self._free -= count
        try:
            yield
        finally:
            self._release(count)

    @contextmanager
    def subtraction(self) -> Iterator[None]:
        """Hold one core while a frame is masked."""
        with self._cond:
            self._cond.wait_for(lambda: self._free >= 1 and not self._model_waits)
            self._free -= 1
        try:
            yield
        finally:
            self._release(1)

    def _release(self, count: int) -> None:
        with self._cond:
            self._free += count
            self._cond.notify_all()


@dataclass
class _Stream:
    """A stream's state in the prefetch: its own subtractor, counter and buffer of masked frames."""

    source: Source
    masker: BackgroundMasker
    buffer: deque = field(default_factory=deque)
    frames: Iterator[np.ndarray] | None = None
    info: video.VideoInfo | None = None
    read: int = 0
    done: bool = False
    reported: bool = False
    error: str | None = None
    decode_s: float = 0.0
    subtract_s: float = 0.0


class _Prefetch:
    """Decodes and masks every stream's frames ahead of the model, at most ``depth`` per stream.

    Each stream has a thread of its own, so that a source that blocks (a stalled camera) holds up no
    other; at most ``threads`` of them mask at a time (the CPU-heavy part: background subtraction),
    each on a core of ``cores`` that the model does not hold. Decoding takes no core of ``cores``:
    a live source's read waits for the camera, and must not keep a core from the model meanwhile.
    """

    def __init__(
        self, sources: Sequence[Source], settings: video.Settings, threads: int, depth: int, cores: _Cores
    ) -> None:
        self.streams = [_Stream(source, BackgroundMasker(settings.subtractor)) for source in sources]
        self.limit, self.depth = settings.max_frames, depth
        self.wait_s = 0.0
        self.best: tuple[str, int, np.ndarray, int] | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._masking = threading.BoundedSemaphore(threads)
        self._cores = cores
        self._next = 0
        for number, stream in enumerate(self.streams):
            # Daemon: a source stuck in a read must not keep the process alive after the run.
            threading.Thread(target=self._fill, args=(stream,), name=f"zeroskip-stream-{number}", daemon=True).start()

    def _fill(self, stream: _Stream) -> None:
        try:
            start = time.perf_counter()
            frames, stream.info = stream.source.open()
            stream.frames = video._checked(frames, self.limit)
            stream.decode_s += time.perf_counter() - start
            while True:
                with self._cond:
                    while len(stream.buffer) >= self.depth and not self._stop.is_set():
                        self._cond.wait()
                if self._stop.is_set():
                    return
                start = time.perf_counter()
                frame = next(stream.frames, None)
                decoded = time.perf_counter()
                stream.decode_s += decoded - start
                if frame is None:
                    return
                if stream.info is None:  # frames given as an iterable: no container to ask
                    length = len(stream.source.target) if isinstance(stream.source.target, Sized) else None
                    stream.info = video.VideoInfo(stream.source.text, frame.shape[1], frame.shape[0], 0.0, length)
                with self._masking, self._cores.subtraction():
                    masking = time.perf_counter()
                    masked = stream.masker(frame)
                    count = int(np.count_nonzero(masked))
                    stream.subtract_s += time.perf_counter() - masking
                with self._cond:
                    if self.best is None or count > self.best[3]:
                        self.best = (stream.source.name, stream.read, masked, count)
                    stream.buffer.append((stream.read, masked))
                    stream.read += 1
                    self._cond.notify_all()
        except Exception as error:  # a broken source fails its own stream only
            stream.error = str(error) or type(error).__name__
        finally:
            if stream.frames is not None:
                stream.frames.close()  # releases the capture now, not when collected
            with self._cond:
                stream.done = True
                self._cond.notify_all()

    def take(self, batch_size: int, max_wait: float) -> tuple[list[tuple[int, int, np.ndarray]], list[_Stream]]:
        """Up to ``batch_size`` ``(stream number, frame number, masked frame)``, one frame per stream
        in turn, grouped by stream; and the streams that have ended since the last call with all
        their frames taken. An empty batch and no stream left means the end."""
        batch: list[tuple[int, int, np.ndarray]] = []
        deadline = None
        with self._cond:
            while True:
                self._gather(batch, batch_size)
                # Streams that may still add to this batch: those whose next frame has its size.
                shape = batch[0][2].shape if batch else None
                live = any(
                    (s.buffer[0][1].shape == shape or shape is None) if s.buffer else not s.done for s in self.streams
                )
                if len(batch) == batch_size or not live:
                    break
                now = time.perf_counter()
                if batch and deadline is None:
                    deadline = now + max_wait
                if deadline is not None and now >= deadline:
                    break
                # Bounded waits: Ctrl-C gets through, and a wake-up cannot be missed for long.
                self._cond.wait(0.25 if deadline is None else min(0.25, deadline - now))
                self.wait_s += time.perf_counter() - now
            finished = [s for s in self.streams if s.done and not s.buffer and not s.reported]
            for stream in finished:
                stream.reported = True
            self._cond.notify_all()  # room in the buffers taken from
        batch.sort(key=lambda item: item[0])
        return batch, finished

    def _gather(self, batch: list, batch_size: int) -> None:
        """Add ready frames to ``batch``, one per stream in turn, starting one stream further on
        each call; only frames of the batch's size (its first frame's), since cameras may differ."""
        count = len(self.streams)
        start, self._next = self._next, (self._next + 1) % count
        took = True
        while took and len(batch) < batch_size:
            took = False
            for offset in range(count):
                number = (start + offset) % count
                stream = self.streams[number]
                if not stream.buffer or len(batch) == batch_size:
                    continue
                if batch and stream.buffer[0][1].shape != batch[0][2].shape:
                    continue
                batch.append((number, *stream.buffer.popleft()))
                took = True

    def close(self) -> None:
        """Stop every stream's thread after the frame it is on (one stuck in a read stays, as a daemon)."""
        with self._cond:
            self._stop.set()
            self._cond.notify_all()


def build_models(settings: video.Settings, models: str) -> tuple[nn.Module | None, nn.Module | None]:
    """``(dense, sparse)`` for ``settings``; the one that ``models`` leaves out is ``None``."""
    if models not in MODELS_RUN:
        raise ValueError(f"`models` must be one of {', '.join(MODELS_RUN)}, got {models!r}")
    dense = build_model(settings.model, settings.seed)
    sparse = sparsify_(copy.deepcopy(dense), mode=settings.mode) if models != "dense" else None
    return (dense if models != "zeroskip" else None), sparse


def process(
    sources: Sequence[Source],
    settings: video.Settings,
    dense: nn.Module | None,
    sparse: nn.Module | None,
    *,
    prefetch_threads: int = 2,
    max_wait: float = 0.5,
    on_frame: Callable[[str, int, np.ndarray, list[torch.Tensor]], None] | None = None,
    worker: int | None = None,
    cores: int | None = None,
) -> Iterator[BatchDone | Progress | StreamDone | EngineDone]:
    """Run ``sources`` through the models, batching frames across streams; yields what happens.

    Each :class:`BatchDone` is followed by a :class:`Progress` per stream in it; every stream's rows
    come before its :class:`StreamDone`; :class:`EngineDone` comes last.

    Args:
        sources: the streams (unique names).
        settings: batch size, frame limit per stream, subtractor.
        dense: the dense model, or ``None`` to run zeroskip only.
        sparse: the sparsified model, or ``None`` to run dense only.
        prefetch_threads: streams that may mask a frame at the same time.
        max_wait: seconds a started batch waits for more frames.
        on_frame: called with ``(stream name, frame number, masked frame, outputs)`` for every
            frame, in order within each stream; ``outputs`` are the model's output tensors for that
            frame (zeroskip's when it runs), without the batch dimension.
        worker: tag for the events (the Ray worker's number).
        cores: the cores the run may use (``None``: every core this process may run on); each model
            call holds as many as it has torch threads, each subtraction one of the others.
    """
    depth = max(2, -(-2 * settings.batch_size // len(sources)))  # about two batches in flight in all
    shared = _Cores(usable_cores() if cores is None else cores)
    prefetch = _Prefetch(sources, settings, prefetch_threads, min(depth, settings.batch_size), shared)
    inputs = _Inputs(settings.batch_size)
    try:
        index = 0
        while True:
            batch, finished = prefetch.take(settings.batch_size, max_wait)
            if batch:
                with shared.model(torch.get_num_threads()):
                    done = _run_batch(index, batch, inputs, prefetch.streams, dense, sparse, on_frame, worker)
                yield done
                for name, row in done.rows:
                    yield Progress(name, row.frames)
                index += 1
            for stream in finished:
                info = asdict(stream.info) if stream.info is not None else None
                yield StreamDone(
                    stream.source.name, stream.read, info, stream.error, stream.decode_s, stream.subtract_s, worker
                )
            if not batch and all(s.reported for s in prefetch.streams):
                break
        best = prefetch.best
        yield EngineDone(prefetch.wait_s, best[:3] if best is not None else None, worker)
    finally:
        prefetch.close()


class _Inputs:
    """The models' input, written into the same memory batch after batch: fresh memory costs a page
    fault per 4 KiB on its first write (85 MB a batch of 16 frames of 768x576), more than the
    conversion itself.

    Args:
        size: images the memory holds (the batch size).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._memory: torch.Tensor | None = None

    def tensor(self, frames: list[np.ndarray]) -> torch.Tensor:
        """The frames as the models' input (:func:`frames_to_tensor`), valid until the next call."""
        height, width, _ = frames[0].shape
        if self._memory is None or self._memory.shape[2:] != (height, width):
            self._memory = torch.empty((self.size, 3, height, width))
        return frames_to_tensor(frames, self._memory)

    def release(self, outputs: list[torch.Tensor]) -> None:
        """Take new memory next time if an output is a view of the input (a model that returns its
        input), which its receiver may keep."""
        memory = self._memory.untyped_storage().data_ptr()
        if any(t.untyped_storage().data_ptr() == memory for t in outputs):
            self._memory = None


def _run_batch(
    index: int,
    batch: list[tuple[int, int, np.ndarray]],
    inputs: _Inputs,
    streams: list[_Stream],
    dense: nn.Module | None,
    sparse: nn.Module | None,
    on_frame: Callable | None,
    worker: int | None,
) -> BatchDone:
    x = inputs.tensor([frame for _, _, frame in batch])
    if index == 0:
        # Untimed warm-up: first calls pay for allocator growth and kernel selection.
        with torch.inference_mode():
            for model in (dense, sparse):
                if model is not None:
                    model(x)
    run = video.run_models(index, x, dense, sparse)
    start = time.perf_counter()
    rows, first = [], 0
    for position in range(1, len(batch) + 1):
        if position == len(batch) or batch[position][0] != batch[first][0]:
            rows.append((streams[batch[first][0]].source.name, run.result(slice(first, position))))
            first = position
    if on_frame is not None:
        outputs = video._tensors(run.y_sparse if run.y_sparse is not None else run.y_dense)
        for position, (number, frame_index, frame) in enumerate(batch):
            on_frame(streams[number].source.name, frame_index, frame, [t[position] for t in outputs])
        inputs.release(outputs)
    return BatchDone(index, rows, time.perf_counter() - start, worker)


def prepare_sources(sources: Sequence[Source | str | os.PathLike | int]) -> list[Source]:
    """:class:`Source` objects as they are and every other item resolved by
    :func:`zeroskip.sources.resolve`, with names made unique across all of them.

    Raises:
        ValueError: no source, or a source string that names nothing (see :func:`resolve`).
    """
    if isinstance(sources, (str, os.PathLike)) or not isinstance(sources, Sequence) or not sources:
        raise ValueError(f"`sources` must be a non-empty list of sources, got {sources!r}")
    resolved: list[Source] = []
    for item in sources:
        resolved.extend([item] if isinstance(item, Source) else resolve([item]))
    names = unique_names([s.name for s in resolved])
    return [Source(name, s.target, s.text) for name, s in zip(names, resolved)]


def _median(values: Iterable[float]) -> float | None:
    values = [v for v in values if not isnan(v)]
    return statistics.median(values) if values else None


def _number(value: float) -> float | None:
    """JSON has no NaN: a time of a model that did not run is ``None``."""
    return None if isnan(value) else value


def _ratio(numerator: float, denominator: float | None) -> float | None:
    if denominator is None or isnan(numerator) or isnan(denominator) or denominator <= 0:
        return None
    return numerator / denominator


class _Collector:
    """Turns the events of a run into the per-stream tables, the summary and the report."""

    def __init__(self, sources: Sequence[Source], outputs: video.Outputs | None, progress: Callable | None) -> None:
        self.sources = {s.name: s for s in sources}
        self.rows: dict[str, list[video.BatchResult]] = {s.name: [] for s in sources}
        self.done: dict[str, StreamDone] = {}
        self.finished_at: dict[str, float] = {}
        self.batches: list[dict] = []
        self.stages = dict.fromkeys(("decode", "subtract", "wait", "check", "write"), 0.0)
        self.sample: tuple[str, int, np.ndarray] | None = None
        self.outputs, self.progress = outputs, progress
        self.start = time.perf_counter()
        self.first_result_s: float | None = None

    def add(self, event: BatchDone | Progress | StreamDone | EngineDone) -> None:
        if isinstance(event, Progress):
            if self.first_result_s is None:
                self.first_result_s = time.perf_counter() - self.start
            if self.progress is not None:
                self.progress(event.name, event.frames)
        elif isinstance(event, BatchDone):
            self.stages["check"] += event.check_s
            start = time.perf_counter()
            for name, row in event.rows:
                self.rows[name].append(row)
                if self.outputs is not None:
                    self.outputs.add_row(row, f"{name}/frames.csv")
            self.stages["write"] += time.perf_counter() - start
            rows = [row for _, row in event.rows]
            self.batches.append({
                "batch": event.index, "worker": event.worker, "frames": sum(r.frames for r in rows),
                "streams": len(rows), "t_sparse": sum(r.t_sparse for r in rows), "t_orig": sum(r.t_orig for r in rows),
                "active_fraction": rows[0].active_fraction,
            })
        elif isinstance(event, StreamDone):
            self.done[event.name] = event
            self.finished_at[event.name] = time.perf_counter() - self.start
            self.stages["decode"] += event.decode_s
            self.stages["subtract"] += event.subtract_s
        else:
            self.stages["wait"] += event.wait_s
            if event.sample is not None and (
                self.sample is None or np.count_nonzero(event.sample[2]) > np.count_nonzero(self.sample[2])
            ):
                self.sample = event.sample

    def stream_summary(self, name: str) -> dict:
        rows, done = self.rows[name], self.done.get(name)
        frames = sum(r.frames for r in rows)
        t_sparse, t_orig = sum(r.t_sparse for r in rows), sum(r.t_orig for r in rows)
        info = done.info if done is not None else None
        error = done.error if done is not None else "the stream never finished"
        errors = [r.max_abs_err for r in rows if not isnan(r.max_abs_err)]
        return {
            "name": name,
            "source": self.sources[name].text,
            "status": "failed" if error is not None else "ok",
            "error": error,
            "frames": frames,
            "batches": len(rows),
            "frame_width": info["width"] if info else None,
            "frame_height": info["height"] if info else None,
            "fps_source": info["fps"] if info else None,
            "frame_count": info["frame_count"] if info else None,
            "t_sparse": _number(t_sparse),
            "t_orig": _number(t_orig),
            "speedup": _ratio(t_orig, t_sparse),
            "max_abs_err": max(errors) if errors else None,
            "outputs_agree": all(r.agree for r in rows),
            "mismatched_batches": [r.batch for r in rows if not r.agree],
            "median_active_fraction": _median(r.active_fraction for r in rows),
            "median_sparsity_before": _median(r.sparsity_before for r in rows),
            # Frames over the time from the start of the run to the stream's end.
            "frames_per_s": _ratio(frames, self.finished_at.get(name)),
            "worker": done.worker if done is not None else None,
            "attempts": done.attempts if done is not None else None,
        }

    def summary(self, settings: dict, env: dict) -> dict:
        wall = time.perf_counter() - self.start
        streams = [self.stream_summary(name) for name in self.rows]
        models = {"t_sparse": settings["models"] != "dense", "t_orig": settings["models"] != "zeroskip"}
        frames = sum(s["frames"] for s in streams)
        t_sparse, t_orig = (
            sum(s[key] or 0.0 for s in streams) if models[key] else nan for key in ("t_sparse", "t_orig")
        )
        errors = [s["max_abs_err"] for s in streams if s["max_abs_err"] is not None]
        return {
            "settings": settings,
            "totals": {
                "streams": len(streams),
                "failed_streams": sum(s["status"] == "failed" for s in streams),
                "frames": frames,
                "batches": len(self.batches),
                "t_sparse": _number(t_sparse),
                "t_orig": _number(t_orig),
                "wall_s": wall,
                "frames_per_s": frames / wall if wall > 0 else None,
                # Start-up (models built, Ray actors started, first batch) is in the wall time.
                "first_result_s": self.first_result_s,
            },
            "speedup": _ratio(t_orig, t_sparse),
            "max_abs_err": max(errors) if errors else None,
            "outputs_agree": all(s["outputs_agree"] for s in streams),
            "mismatched": [{"stream": s["name"], "batches": s["mismatched_batches"]} for s in streams
                           if s["mismatched_batches"]],
            # Decoding and subtraction overlap the model (other threads): their sums may exceed the wall time.
            "stages": {
                "decode_s": self.stages["decode"],
                "subtract_s": self.stages["subtract"],
                "wait_for_frames_s": self.stages["wait"],
                "model_dense_s": _number(t_orig),
                "model_zeroskip_s": _number(t_sparse),
                "check_s": self.stages["check"],
                "write_s": self.stages["write"],
                "wall_s": wall,
            },
            "streams": streams,
            "batches": self.batches,
            "environment": env,
        }


def run(
    sources: Sequence[Source | str | os.PathLike | int],
    settings: video.Settings,
    out: str | os.PathLike | None,
    *,
    models: str = "both",
    prefetch_threads: int | None = None,
    max_wait: float = 0.5,
    on_frame: Callable[[str, int, np.ndarray, list[torch.Tensor]], None] | None = None,
    progress: bool | Callable[[str, int], None] = False,
    ray: str | None = None,
    workers: int = 2,
) -> dict:
    """Run many streams through the dense model and its zeroskip twin, batching frames across streams.

    Args:
        sources: :class:`zeroskip.sources.Source` objects, or strings resolved by
            :func:`zeroskip.sources.resolve` (files, directories, list files, camera indices, URLs).
        settings: batch size (frames across streams), frame limit per stream, subtractor, model,
            mode, threads and seed.
        out: output directory (created if missing), or ``None`` to write nothing.
        models: ``"both"`` (compare zeroskip with dense, as for one clip), ``"zeroskip"`` or
            ``"dense"`` (run only that model: pipeline throughput).
        prefetch_threads: streams that may mask a frame at the same time (in each Ray worker under
            Ray); ``None``: as many as the cores. They mask on the cores that the model's calls do
            not hold (each call holds as many as it has torch threads), so never beside a call
            on the same core: its many short parallel operators would wait on descheduled threads.
        max_wait: seconds a started batch waits for more frames before it leaves part-full.
        on_frame: called with ``(stream name, frame number, masked frame, output tensors)`` for
            every frame, in order within each stream (not under Ray).
        progress: ``True`` to show a progress bar on stderr (when stderr is a terminal), or a
            callable given ``(stream name, frames)`` as frames go through (negative when a dead
            Ray worker's frames are dropped, to be run again).
        ray: ``None`` to run in this process; ``"local"`` for a local Ray instance (or the one
            already initialised), or the address of a Ray cluster.
        workers: Ray actors to shard the streams over.

    Returns:
        The summary (as written to ``summary.json``: per-stream and total frames, frames/s, times,
        speed-up, max error, status and error of every stream, time per stage), plus ``"outputs"``:
        the written paths. A failed stream does not raise: see its ``status`` and ``error``.

    Raises:
        ValueError: bad settings or sources, or an unwritable ``out``. Nothing is left in ``out``
            on any error, Ctrl-C included.
        ImportError: ``ray`` is set and Ray is not installed.
    """
    from tqdm import tqdm

    if not isinstance(settings, video.Settings):
        raise TypeError(f"`settings` must be a zeroskip.video.Settings, got {type(settings).__name__}")
    if prefetch_threads is None:
        prefetch_threads = usable_cores()
    for name, value in (("prefetch_threads", prefetch_threads), ("workers", workers)):
        video._positive_int(value, name)
    if isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)) or not max_wait >= 0:
        raise ValueError(f"`max_wait` must be a number of seconds >= 0, got {max_wait!r}")
    if ray is not None and on_frame is not None:
        raise ValueError("`on_frame` must be None under Ray (outputs stay in the workers), got a callable")
    streams = prepare_sources(sources)
    if ray is not None:
        from . import ray_streams

        ray_streams.check_available()
    dense, sparse = build_models(settings, models) if ray is None else (None, None)
    outputs = video.Outputs(out, [f"{s.name}/frames.csv" for s in streams]) if out is not None else None
    previous_threads = torch.get_num_threads()
    try:
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        env = video.environment()
        # Known up front for clips given as sequences only: files tell their length once opened.
        counts = [len(s.target) if isinstance(s.target, Sized) and not isinstance(s.target, str) else None
                  for s in streams]
        total = None if None in counts else sum(min(c, settings.max_frames or c) for c in counts)
        # disable=None: a bar on a terminal, nothing in logs and pipes.
        bar = tqdm(
            total=total, unit="frame", desc="zeroskip", file=sys.stderr, disable=None if progress is True else True
        )

        def advance(name: str, frames: int) -> None:
            bar.update(frames)

        collector = _Collector(streams, outputs, progress if callable(progress) else advance)
        if ray is None:
            events = process(
                streams, settings, dense, sparse, prefetch_threads=prefetch_threads, max_wait=max_wait,
                on_frame=on_frame,
            )
        else:
            events = ray_streams.events(
                streams, settings, ray, workers, models=models, prefetch_threads=prefetch_threads, max_wait=max_wait,
            )
        with bar:
            for event in events:
                collector.add(event)
        run_settings = {
            **asdict(settings), "sources": [s.text for s in streams], "models": models,
            "prefetch_threads": prefetch_threads, "max_wait_s": max_wait, "ray": ray,
            "workers": workers if ray is not None else None,
        }
        summary = collector.summary(run_settings, env)
        paths = {}
        if outputs is not None:
            from .report import write_streams_report

            report_model = sparse if sparse is not None else build_models(settings, "zeroskip")[1]
            paths = outputs.commit(
                summary, lambda path: write_streams_report(path, summary, collector.sample, report_model)
            )
        summary["outputs"] = paths
        return summary
    except BaseException:
        if outputs is not None:
            outputs.discard()
        raise
    finally:
        torch.set_num_threads(previous_threads)


def format_summary(summary: dict) -> str:
    """The short table printed at the end of a many-stream run."""
    totals, settings, stages = summary["totals"], summary["settings"], summary["stages"]
    where = f"Ray, {settings['workers']} workers" if settings.get("ray") else "in process"
    lines = [
        f"{totals['frames']} frames of {totals['streams']} streams in {totals['batches']} batches of up to"
        f" {settings['batch_size']} ({where}); model {settings['model']}, mode {settings['mode']},"
        f" subtractor {settings['subtractor']}, torch threads: {summary['environment']['torch_threads']}",
        f"{totals['frames_per_s'] or 0:.1f} frames/s over {totals['wall_s']:.2f} s",
    ]
    if totals["frames"] and totals["t_orig"] is not None and totals["t_sparse"] is not None:
        lines.append(
            f"model time: dense {totals['t_orig']:.3f} s, zeroskip {totals['t_sparse']:.3f} s,"
            f" speed-up {summary['speedup'] or float('nan'):.2f}x"
        )
    if summary["max_abs_err"] is not None:
        agreement = "every stream agrees with dense" if summary["outputs_agree"] else "DIFFERS from dense"
        lines.append(f"max |zeroskip - dense|: {summary['max_abs_err']:.3g} ({agreement})")
    parts = [(key.removesuffix("_s").replace("_", " "), value) for key, value in stages.items() if value is not None]
    lines.append("time per stage (s): " + ", ".join(f"{name} {value:.2f}" for name, value in parts))
    for stream in summary["streams"]:
        if stream["status"] == "failed":
            lines.append(f"stream {stream['name']} FAILED after {stream['frames']} frames: {stream['error']}")
    lines.extend(f"wrote {path}" for name, path in summary["outputs"].items() if "/" not in name)
    if summary["outputs"]:
        lines.append(f"wrote {totals['streams']} frames.csv under {Path(summary['outputs']['summary.json']).parent}")
    return "\n".join(lines)
