"""Whole-network workload: a model of the zoo, dense against sparsified, on masked video frames.

:func:`network_workload` times the dense model and its :func:`zeroskip.sparsify_` twin on the same
masked frames (alternating blocks, medians, as :func:`zeroskip.bench.measure` does), checks that
their outputs agree, reports the active fraction of every convolution and of every stage, and times
both once more on the unmasked frames, where zeroskip can skip nothing and must not cost more.

``python -m zeroskip.network_bench resnet18 --size 1080x1920`` prints one result as JSON.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._profiler import CallRecord, profile
from .bench import DEFAULT_VIDEO, _threads, masked_frames, measure, video_frames
from .convert import sparsify_
from .masking import frames_to_tensor
from .models import MODELS, build_model


def _raw_frames(video: Path, count: int, first: int) -> torch.Tensor:
    """Frames ``first .. first + count - 1`` of ``video``, unmasked, float ``(count, 3, H, W)``."""
    return frames_to_tensor(list(itertools.islice(video_frames(video, first + count), first, None)))


def stages(names: Sequence[str]) -> dict[str, str]:
    """Stage of each qualified convolution name: its top-level block, or the block below a
    container that holds most of the network (``features.3`` in MobileNet, ``backbone.layer2`` in FCN)."""
    stage = {name: name.split(".")[0] for name in names}
    for depth in (2, 3):
        crowded = {s for s, n in Counter(stage.values()).items() if n > len(names) / 2}
        if not crowded:
            break
        stage = {name: ".".join(name.split(".")[:depth]) if stage[name] in crowded else stage[name] for name in names}
    return stage


def _stage_fractions(records: Sequence[CallRecord]) -> dict[str, float]:
    stage_of = stages([r.name or "-" for r in records])
    groups: dict[str, list[float]] = defaultdict(list)
    for record in records:
        groups[stage_of[record.name or "-"]].append(record.active_fraction)
    return {stage: sum(values) / len(values) for stage, values in groups.items()}


def _batches(frames: torch.Tensor, batch: int) -> list[torch.Tensor]:
    count = max(1, frames.shape[0] // batch)
    return [frames[i * batch : (i + 1) * batch] for i in range(count)]


def _cycling(model: nn.Module, inputs: Sequence[torch.Tensor]):
    cycle = itertools.cycle(inputs)

    def run() -> None:
        model(next(cycle))

    return run


def _output(result: object) -> torch.Tensor:
    return result["out"] if isinstance(result, dict) else result


def network_workload(
    model: str = "resnet18",
    *,
    size: tuple[int, int] | None = None,
    batch: int = 1,
    frames: int = 4,
    first: int = 60,
    repeats: int = 7,
    min_block_s: float = 0.0,
    threads: int = 2,
    video: Path = DEFAULT_VIDEO,
    seed: int = 0,
    dense_input: bool = True,
) -> dict:
    """Time ``model`` dense and sparsified on masked frames of ``video``.

    Args:
        model: a name in :data:`zeroskip.models.MODELS`.
        size: ``(H, W)`` the frames are resized to (nearest, so masks stay exact); native when ``None``.
        batch: frames per call.
        frames: masked frames used, cycled through (the background subtractor trains on the
            ``first`` frames before them).
        repeats: timed rounds; each figure is the median over them.
        min_block_s: shortest timed block (calls are repeated to fill it).
        threads: ``torch.set_num_threads`` while timing.
        dense_input: also time both models on the unmasked frames.

    Returns:
        A JSON-ready dict: ``model``, ``size``, ``batch``, ``threads``, ``dense_ms`` and
        ``sparse_ms`` (:class:`zeroskip.bench.Timing` fields), ``speedup`` (dense over sparse
        medians), ``max_error`` (largest difference over the largest dense output magnitude),
        ``layers`` (per convolution: name, path run, active fraction), ``stages`` (mean active
        fraction per stage), ``dense_input`` (the same timings on unmasked frames and ``ratio``,
        sparse over dense) and ``load`` (the 1-minute load average before and after).
    """
    if model not in MODELS:
        raise ValueError(f"`model` must be one of {', '.join(MODELS)}, got {model!r}")
    load_before = os.getloadavg()[0]
    masked = masked_frames(video, frames * batch, first)
    raw = _raw_frames(video, frames * batch, first) if dense_input else None
    if size is not None:
        masked = F.interpolate(masked, size=size, mode="nearest")
        raw = None if raw is None else F.interpolate(raw, size=size, mode="nearest")
    dense = build_model(model, seed)
    sparse = sparsify_(copy.deepcopy(dense))
    inputs = _batches(masked, batch)
    result: dict = {"model": model, "size": list(masked.shape[2:]), "batch": batch, "threads": threads}
    with _threads(threads), torch.inference_mode():
        expected, actual = _output(dense(inputs[0])), _output(sparse(inputs[0]))
        scale = float(expected.abs().max()) or 1.0
        result["max_error"] = float((actual - expected).abs().max()) / scale
        with profile() as prof:
            sparse(inputs[0])
        timings = measure({"dense": _cycling(dense, inputs), "sparse": _cycling(sparse, inputs)}, repeats, min_block_s)
        result["dense_ms"] = dataclasses.asdict(timings["dense"])
        result["sparse_ms"] = dataclasses.asdict(timings["sparse"])
        result["speedup"] = timings["dense"].median / timings["sparse"].median
        if raw is not None:
            raw_inputs = _batches(raw, batch)
            plain = measure({"dense": _cycling(dense, raw_inputs), "sparse": _cycling(sparse, raw_inputs)}, repeats,
                            min_block_s)
            result["dense_input"] = {
                "dense_ms": dataclasses.asdict(plain["dense"]),
                "sparse_ms": dataclasses.asdict(plain["sparse"]),
                "ratio": plain["sparse"].median / plain["dense"].median,
            }
    result["layers"] = [[r.name, r.chosen, r.active_fraction] for r in prof.records]
    result["stages"] = _stage_fractions(prof.records)
    result["load"] = [load_before, os.getloadavg()[0]]
    return result


def _size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zeroskip.network_bench", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=list(MODELS))
    parser.add_argument("--size", type=_size, default=None, help="HxW, e.g. 1080x1920")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-dense-input", action="store_true")
    args = parser.parse_args(argv)
    result = network_workload(
        args.model, size=args.size, batch=args.batch, repeats=args.repeats, threads=args.threads,
        dense_input=not args.no_dense_input,
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
