"""W6: many cameras, 16 streams through the whole pipeline, batched across streams (issue 12)."""

from __future__ import annotations

from ...sources import Source
from ..settings import Context
from ..streams import STREAMS, VideoSegment, camera_sources, model_row, pipeline, pipeline_row, ray_row


def run(ctx: Context) -> dict:
    """W6 at the configuration's thread count, in the run's first heap mode only (a pipeline allocates as
    users' processes do; each W6 run takes minutes): the pipeline with zeroskip over the same with dense
    (stem, resnet18), the model stage at cross-stream batch 16 and for one stream at batch 1, 2 Ray
    workers over one process (from 2 threads), and the memory one stream adds."""
    settings, threads = ctx.settings, ctx.config.threads
    if ctx.config.heap != settings.heaps[0]:
        return {"title": TITLE, "kind": "streams", "rows": []}
    video = settings.video if settings.video is not None and settings.video.is_file() else None
    size = settings.stream_size

    def log(summary: dict, what: str) -> dict:
        totals = summary["totals"]
        ctx.log(f"  {what:<44} {totals['frames_per_s']:7.1f} frames/s, {totals['frames']} frames,"
                f" wall {totals['wall_s']:.1f} s")
        return summary

    # Memory first, before other runs' heap can hide growth: the slope from 4 to 16 streams.
    small, large = (log(pipeline(camera_sources(video, count, 8, size), "stem", "zeroskip", 16, threads),
                        f"memory: {count} streams") for count in (4, STREAMS))
    per_stream = (large["rss_peak_mb"] - small["rss_peak_mb"]) / (STREAMS - 4)
    rows = []
    sources = camera_sources(video, STREAMS, settings.stream_frames, size)
    runs = {}
    for model, frames in (("stem", settings.stream_frames), ("resnet18", settings.stream_network_frames)):
        chosen = sources if frames == settings.stream_frames else camera_sources(video, STREAMS, frames, size)
        runs[model] = {m: log(pipeline(chosen, model, m, 16, threads), f"pipeline: {model} {m}")
                       for m in ("dense", "zeroskip")}
        rows.append(pipeline_row(f"W6 pipeline {model}, {STREAMS} streams, batch 16", runs[model]["dense"],
                                 runs[model]["zeroskip"], model=model,
                                 rss_mb_per_stream=per_stream if model == "stem" else None))
    # Comparing the outputs costs more than the models: fewer frames (8 per stream) for these two.
    few = camera_sources(video, STREAMS, 8, size)
    both = log(pipeline(few, "stem", "both", 16, threads), "model stage: batch 16 across streams")
    rows.append(model_row(f"W6 model stage stem, {STREAMS} streams, cross-stream batch 16", both, model="stem"))
    first = sources[0].target
    one = [Source("one", VideoSegment(first.path, first.start, 4 * 8), "one")]
    alone = log(pipeline(one, "stem", "both", 1, threads), "model stage: one stream, batch 1")
    rows.append(model_row("W6 model stage stem, 1 stream, batch 1", alone, model="stem"))
    if threads >= 2:
        row = ray_row(f"W6 Ray 2 workers x {threads // 2} threads over one process, stem zeroskip",
                      runs["stem"]["zeroskip"], threads, sources, ctx.log)
        if row is not None:
            rows.append({**row, "model": "stem"})
    return {
        "title": TITLE,
        "kind": "streams",
        "rows": rows,
        "notes": [
            "*speed-up*: pipeline rows, steady frames/s of the whole pipeline (decode, MOG subtraction in"
            " prefetch threads, model, per-stream rows) with zeroskip over the same with the dense model;"
            " model-stage rows, dense model time over zeroskip's on the same batches (both run, alternating,"
            " outputs compared); Ray row, steady frames/s with 2 Ray workers over one process with the same"
            " total threads. *steady*: frames/s after the first result (start-up excluded: models built, first"
            " batch's warm-up, Ray actors started; cameras run for hours); *over the wall time*: start-up included."
            " Stages are summed over threads: decoding and subtraction overlap the model. *RSS per stream*:"
            " growth of the peak resident set between 4 and 16 streams (subtractor state, frames in flight).",
        ],
    }


TITLE = f"W6: many cameras, {STREAMS} streams (vtest segments, synthetic clips), whole pipeline"
