"""The spconv peer next to W1 (optional: only when spconv is installed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .rows import batched, conv_args, each, first_mismatch
from .settings import Context
from .timing import measure


def spconv_peer(ctx: Context, conv: nn.Conv2d, frames: torch.Tensor) -> dict:
    """spconv's ``SparseConv2d`` (CPU) with W1's geometry and weights, next to dense and zeroskip.

    The masked frame becomes a ``SparseConvTensor`` of its non-zero pixels (``from_dense`` on the
    channels-last frame: a site is active when any channel is non-zero). spconv's weight layout is
    ``(C_out, kH, kW, C_in)``. Its output, made dense again, must equal ``F.conv2d`` (twice per input,
    as a race shows up only sometimes) before any timing; if it does not at the run's thread count,
    the whole comparison (dense and zeroskip included) is made at one thread, and the failure noted.
    Two spconv times are reported: the convolution alone on a ready sparse tensor, and the whole
    trip from the dense channels-last frame (conversion in, convolution, dense output).
    """
    try:
        import spconv
        import spconv.pytorch as spconv_torch
    except Exception as error:  # noqa: BLE001 - any import failure means "no peer", reported as such
        return {"status": "unavailable", "error": f"{type(error).__name__}: {error}"}
    rows, notes = [], []
    try:
        sparse_conv = spconv_torch.SparseConv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            bias=False,
        ).requires_grad_(False)
        if tuple(sparse_conv.weight.shape) != (conv.out_channels, *conv.kernel_size, conv.in_channels):
            raise ValueError(f"unexpected spconv weight layout {tuple(sparse_conv.weight.shape)}")
        sparse_conv.weight.copy_(conv.weight.permute(0, 2, 3, 1))
        for batch in ctx.settings.batches:
            inputs = batched(frames, batch, len(frames))
            threads = torch.get_num_threads()
            mismatch = _spconv_mismatch(spconv_torch, sparse_conv, conv, inputs)
            if mismatch and threads > 1:
                notes.append(f"batch {batch}: at {threads} threads spconv's output differs from dense, and from run"
                             f" to run ({mismatch}); this comparison is made at 1 thread")
                with threads(1):
                    mismatch = _spconv_mismatch(spconv_torch, sparse_conv, conv, inputs)
                    if not mismatch:
                        rows.append(_spconv_row(ctx, spconv_torch, sparse_conv, conv, inputs))
            elif not mismatch:
                rows.append(_spconv_row(ctx, spconv_torch, sparse_conv, conv, inputs))
            if mismatch:
                notes.append(f"batch {batch}: spconv's output differs from dense ({mismatch}); not timed")
    except Exception as error:  # noqa: BLE001 - a failing peer is a result, not a failed benchmark
        return {"status": "failed", "error": f"{type(error).__name__}: {' '.join(str(error).split())[:400]}",
                "rows": rows, "notes": notes}
    status = "ok" if rows else "failed"
    return {"status": status, "version": getattr(spconv, "__version__", "unknown"), "rows": rows, "notes": notes}


def _spconv_mismatch(spconv_torch, sparse_conv: nn.Module, conv: nn.Conv2d, inputs: Sequence[torch.Tensor]) -> str:
    """``""`` if spconv equals dense on every input, twice over, else the first difference."""
    args = conv_args(conv)

    def run(x: torch.Tensor) -> torch.Tensor:
        return sparse_conv(spconv_torch.SparseConvTensor.from_dense(x.permute(0, 2, 3, 1).contiguous())).dense()

    _, mismatch = first_mismatch(lambda x: F.conv2d(x, **args), run, [*inputs, *inputs])
    return mismatch


def _spconv_row(ctx: Context, spconv_torch, sparse_conv: nn.Module, conv: nn.Conv2d,
                inputs: Sequence[torch.Tensor]) -> dict:
    from ..conv import conv2d

    args = conv_args(conv)
    channels_last = [x.permute(0, 2, 3, 1).contiguous() for x in inputs]
    ready = [spconv_torch.SparseConvTensor.from_dense(x) for x in channels_last]
    timings = measure(
        {
            "dense": each(lambda x: F.conv2d(x, **args), inputs),
            "zeroskip": each(lambda x: conv2d(x, **args), inputs),
            "spconv conv only": each(sparse_conv, ready),
            "spconv dense to dense": each(
                lambda x: sparse_conv(spconv_torch.SparseConvTensor.from_dense(x)).dense(), channels_last
            ),
        },
        ctx.settings.repeats, ctx.settings.min_block_s,
    )
    row = {"batch": int(inputs[0].shape[0]), "threads": torch.get_num_threads()}
    row.update({f"{name} ms": t.median / len(inputs) for name, t in timings.items()})
    for name in ("zeroskip", "spconv conv only", "spconv dense to dense"):
        row[f"speedup {name}"] = row["dense ms"] / row[f"{name} ms"]
    ctx.log(
        f"  spconv batch {row['batch']} ({row['threads']} threads): conv only {row['spconv conv only ms']:.2f} ms,"
        f" dense to dense {row['spconv dense to dense ms']:.2f} ms, zeroskip {row['zeroskip ms']:.2f} ms,"
        f" dense {row['dense ms']:.2f} ms"
    )
    return row


