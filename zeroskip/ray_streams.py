"""Many cameras over Ray: streams sharded over actors, each holding one dense model, its sparsified
twin and its streams' background subtractors, running :func:`zeroskip.streams.process` on its
share; results stream back to the driver, which writes the outputs.

Exactly once: the driver keeps a worker's results until that worker has finished all its streams.
If the worker dies first (a killed actor, a lost node), they are dropped and its streams are re-run
from their start on a new actor, up to :data:`MAX_ATTEMPTS` times; so every frame of every stream
appears once in the outputs.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from . import streams
from .sources import Source
from .video import Settings

# Runs of a stream before it is reported as failed, its worker having died every time.
MAX_ATTEMPTS = 3
_POLL_S = 0.5


def check_available():
    """The ``ray`` module.

    Raises:
        ImportError: Ray is not installed (one line saying how to install it).
    """
    try:
        import ray
    except ImportError as error:
        raise ImportError("`--ray` needs Ray, which is not installed: pip install 'zeroskip[ray]'") from error
    return ray


class StreamWorker:
    """The actor: one pair of models, and the engine over its streams in a thread of its own, whose
    events :meth:`poll` hands out as they come. The engine's model calls and subtractions share as
    many cores as the actor has torch threads."""

    def __init__(self, settings: Settings, models: str, threads: int, prefetch_threads: int, max_wait: float,
                 worker: int) -> None:
        torch.set_num_threads(threads)
        self.settings, self.prefetch_threads, self.max_wait, self.worker = settings, prefetch_threads, max_wait, worker
        self.dense, self.sparse = streams.build_models(settings, models)
        self.events: queue.Queue = queue.Queue()

    def start(self, sources: Sequence[Source]) -> None:
        threading.Thread(target=self._work, args=(list(sources),), daemon=True).start()

    def _work(self, sources: list[Source]) -> None:
        try:
            for event in streams.process(
                sources, self.settings, self.dense, self.sparse, prefetch_threads=self.prefetch_threads,
                max_wait=self.max_wait, worker=self.worker, cores=torch.get_num_threads(),
            ):
                self.events.put(event)
        except Exception as error:  # handed to the driver, which raises it
            self.events.put(RuntimeError(f"Ray worker {self.worker} failed: {error}"))

    def poll(self) -> list:
        """The events queued so far, waiting up to half a second for the first (empty if none came).

        All of them in one reply: one round trip per event (a batch and a progress event per stream
        in it) cost the driver and the worker CPU time that the model and the subtractions need.
        """
        try:
            events = [self.events.get(timeout=_POLL_S)]
        except queue.Empty:
            return []
        while True:
            try:
                events.append(self.events.get_nowait())
            except queue.Empty:
                return events


@dataclass
class _Shard:
    """One worker's streams and what it sent so far (kept until it has finished them all)."""

    number: int
    sources: list[Source]
    actor: object = None
    held: list | None = None
    frames: dict | None = None
    finished: bool = False


def events(
    sources: Sequence[Source],
    settings: Settings,
    address: str,
    workers: int,
    *,
    models: str = "both",
    prefetch_threads: int = 2,
    max_wait: float = 0.5,
) -> Iterator[object]:
    """The events of :func:`zeroskip.streams.process` for ``sources`` sharded over ``workers`` Ray
    actors (stream ``i`` on worker ``i % workers``), each worker's released once it has finished,
    but :class:`zeroskip.streams.Progress` events as they come (negative for a dead worker's frames).

    Args:
        address: ``"local"`` for a local Ray instance (or the one already initialised in this
            process), else the address of a Ray cluster.

    Raises:
        ImportError: Ray is not installed.
        ValueError: the cluster has fewer CPUs than ``workers``.
        RuntimeError: a worker's engine failed (not a stream: those fail alone).
    """
    ray = check_available()
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=None if address == "local" else address, include_dashboard=False, log_to_driver=False,
            logging_level=logging.ERROR,
        )
    actors = []
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < workers:
            raise ValueError(f"`workers` must be at most the Ray cluster's {cpus} CPUs, got {workers}")
        threads = settings.threads or max(1, cpus // workers)
        actor_class = ray.remote(num_cpus=1)(StreamWorker)
        token = secrets.token_hex(3)
        attempts = {s.name: 1 for s in sources}
        shards = [_Shard(k, list(sources[k::workers])) for k in range(workers) if sources[k::workers]]

        def launch(shard: _Shard) -> object:
            attempt = attempts[shard.sources[0].name]
            shard.actor = actor_class.options(name=f"zeroskip-{token}-{shard.number}-{attempt}").remote(
                settings, models, threads, prefetch_threads, max_wait, shard.number
            )
            actors.append(shard.actor)
            shard.held, shard.frames = [], dict.fromkeys((s.name for s in shard.sources), 0)
            shard.actor.start.remote(shard.sources)
            return shard.actor.poll.remote()

        pending = {launch(shard): shard for shard in shards}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            shard = pending.pop(ref)
            try:
                arrived = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                yield from _lost(shard, attempts, error)
                if any(attempts[s.name] <= MAX_ATTEMPTS for s in shard.sources):
                    pending[launch(shard)] = shard
                continue
            for event in arrived:
                if isinstance(event, Exception):
                    raise event
                if isinstance(event, streams.Progress):
                    shard.frames[event.name] += event.frames
                    yield event
                else:
                    shard.held.append(event)
            if arrived and isinstance(arrived[-1], streams.EngineDone):
                for held in shard.held:
                    yield replace(held, attempts=attempts[held.name]) if isinstance(held, streams.StreamDone) else held
                shard.finished = True
                ray.kill(shard.actor)
            else:
                pending[shard.actor.poll.remote()] = shard
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


def _lost(shard: _Shard, attempts: dict[str, int], error: Exception) -> Iterator[object]:
    """Drop what a dead worker sent; its streams fail once they have used up their attempts."""
    for name, frames in shard.frames.items():
        if frames:
            yield streams.Progress(name, -frames)
        attempts[name] += 1
    if attempts[shard.sources[0].name] > MAX_ATTEMPTS:
        reason = f"its Ray worker died {MAX_ATTEMPTS} times (last: {type(error).__name__})"
        for source in shard.sources:
            yield streams.StreamDone(source.name, 0, None, reason, 0.0, 0.0, shard.number, MAX_ATTEMPTS)
