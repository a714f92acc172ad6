"""The engine of a sparse convolution call, cut by stage of the data path:

1. :mod:`~zeroskip.engine.check`: can the call skip anything, and where is its input active?
2. :mod:`~zeroskip.engine.plan`: per image, fill, tiles, rows or dense (one :class:`Plan`).
3. :mod:`~zeroskip.engine.output`: the output tensor, laid out as ``F.conv2d``'s.
4. :mod:`~zeroskip.engine.execute`: the native executor (one parallel pass) or the torch one.

Each stage runs under ``torch.profiler.record_function("zeroskip::<stage>")`` while a profiler
records.
"""

from __future__ import annotations

import contextlib

import torch
import torch.autograd.profiler as autograd_profiler
import torch.nn.functional as F
from torch.profiler import record_function

from .._background import Background
from .._geometry import ConvGeometry, Pair
from ..fusion import Epilogue, finish
from . import native
from .check import dense_reason, measure, parameters_finite, sampled_reason
from .cost import image_costs, sparse_can_win
from .execute import execute
from .output import new_output
from .plan import Plan, carried_maps, default_tile_size, make_plan

__all__ = ["Plan", "dense_reason", "run"]


_NOT_RECORDED = contextlib.nullcontext()


def _stage(name: str) -> contextlib.AbstractContextManager:
    """The label of an engine stage, for profilers: entering a ``record_function`` costs about
    8 us even when nothing records, four times a call, so it is entered only while a profiler runs
    (one started from Python in any thread, or one this thread's C++ state says is on)."""
    if autograd_profiler._is_profiler_enabled or torch._C._autograd._profiler_enabled():
        return record_function(name)
    return _NOT_RECORDED


def _dense(x, weight, bias, padding, g: ConvGeometry, reason: str, epilogue):
    return finish(F.conv2d(x, weight, bias, g.stride, padding, g.dilation, g.groups), epilogue), "dense", 1.0, reason


def run(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding,
    g: ConvGeometry,
    mode: str,
    tile_size: Pair | None,
    activity: torch.Tensor | None = None,
    background=None,
    epilogue: Epilogue | None = None,
) -> tuple[torch.Tensor, str, float, str]:
    """One convolution call through the four stages.

    Args:
        x: input ``(B, C, H, W)``.
        padding: the call's ``F.conv2d`` padding argument.
        mode: ``"auto"``, ``"dense"``, ``"rows"`` or ``"tiles"``.
        tile_size: output tile, or ``None`` for the layer's default.
        activity: uint8 ``(B, H_out, W_out)`` from a carried input: replaces the activity check.
        background: callable returning the :class:`~zeroskip._background.Background` of the
            skipped outputs (a carried input's, after ``epilogue``); ``None``: the bias.
        epilogue: the :class:`~zeroskip.fusion.Epilogue` applied to every output, on every path.

    Returns:
        The output, what ran (``"dense"``, ``"fill"``, ``"tiles"``, ``"rows"`` or a ``+`` of
        them), the fraction of the output computed, and the plan detail (or the dense reason).
    """
    with _stage("zeroskip::check"):
        reason = "mode=dense" if mode == "dense" else dense_reason(x, weight, bias)
        if not reason:
            use_native = native.executes(x, weight)
            costs = image_costs(g, x.element_size(), activity is None)
            if mode == "auto" and not sparse_can_win(costs, g.batch, use_native):
                reason = "layer too cheap to skip"
        if reason:
            return _dense(x, weight, bias, padding, g, reason, epilogue)
        tile = tile_size if tile_size is not None else default_tile_size(g, activity is not None, use_native)
        tile = (min(tile[0], g.out_height), min(tile[1], g.out_width))
        if activity is None:
            reason, sample = sampled_reason(x, g, tile, costs, use_native) if mode == "auto" else ("", None)
            if reason:
                return _dense(x, weight, bias, padding, g, reason, epilogue)
            tiles, rows = measure(x, g, tile, sample)
            columns, block = tiles, tile
        else:
            tiles, rows = carried_maps(activity, tile)
            columns, block = activity, (1, 1)
    with _stage("zeroskip::plan"):
        plan = make_plan(g, mode, tile, costs, use_native, tiles, rows, columns, block)
    if plan.all_dense:
        # Decided before any output is allocated: an all-dense batch costs the check and nothing more.
        return _dense(x, weight, bias, padding, g, "cost model", epilogue)
    # Only a call that skips something needs finite weights (0 * inf is NaN in the dense result).
    # Reading every weight costs 0.4 ms on a 512 x 512 x 3 x 3 layer, more than the rest of the
    # check: the native executor checks them as it packs them, here only calls it would not.
    if not plan.checks_weights and not parameters_finite(weight, bias):
        return _dense(x, weight, bias, padding, g, "non-finite weights", epilogue)
    with _stage("zeroskip::output"):
        out, zeroed = new_output(x, weight, g, zeroed=plan.native)
    field: Background | None = background() if background is not None else None
    with _stage("zeroskip::execute"):
        detail = execute(plan, x, weight, bias, padding, out, field, zeroed, epilogue)
    if detail is None:
        return _dense(x, weight, bias, padding, g, "non-finite weights", epilogue)
    ran = "+".join(sorted(set(plan.paths)))
    return out, ran, sum(plan.fractions) / g.batch, detail
