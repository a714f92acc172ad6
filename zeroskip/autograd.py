"""Sparse forward, dense backward: zeroskip's convolution under autograd.

With gradients recorded, :func:`zeroskip.conv2d` and :class:`zeroskip.SparseConv2d` still skip the
all-zero parts of the input in the forward pass, through :class:`SparseConv2dFunction`, whose
backward is PyTorch's own dense convolution backward on the saved input and weight. The gradients
are therefore dense PyTorch's: the forward's output equals dense (the engine's contract) and the
backward does not depend on how that output was computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _profiler
from ._geometry import ConvGeometry


def needs_grad(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether this call must be recorded for autograd (grad mode on and a tensor requiring grad)."""
    return torch.is_grad_enabled() and (
        input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )


class SparseConv2dFunction(torch.autograd.Function):
    """Forward: the zeroskip engine (``zeroskip.conv._conv2d``) without autograd. Backward:
    ``aten.convolution_backward``, the backward of dense ``F.conv2d``, itself differentiable, so
    that double backward works too.

    Arguments of ``forward`` after ``weight`` and ``bias``: stride, padding, dilation, groups as
    given to ``F.conv2d``; mode, tile_size and the module name as given to the engine; and the
    call's :class:`~zeroskip._geometry.ConvGeometry` (batched: the input is ``(B, C, H, W)``).
    """

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation, groups, mode, tile_size, name, geometry):
        from .conv import _conv2d  # conv imports this module to route autograd calls here

        ctx.geometry = geometry
        ctx.has_bias = bias is not None
        ctx.save_for_backward(input, weight)
        with torch.no_grad(), _profiler.annotate(_profiler.AUTOGRAD_NOTE):
            return _conv2d(input, weight, bias, stride, padding, dilation, groups, mode, tile_size, name=name)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        g: ConvGeometry = ctx.geometry
        # padding="same" with an even effective kernel pads one more at the bottom and right, as
        # F.conv2d does: pad that extra explicitly, so that the rest is symmetric, and crop it off.
        extra_h, extra_w = g.pad_bottom - g.pad_top, g.pad_right - g.pad_left
        padded = F.pad(input, (0, extra_w, 0, extra_h)) if extra_h or extra_w else input
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output, padded, weight, [g.out_channels] if ctx.has_bias else None, list(g.stride),
            [g.pad_top, g.pad_left], list(g.dilation), False, [0, 0], g.groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]],
        )
        if grad_input is not None and (extra_h or extra_w):
            grad_input = grad_input[:, :, : g.height, : g.width]
        return (grad_input, grad_weight, grad_bias) + (None,) * 8


def conv2d(
    input, weight, bias, stride, padding, dilation, groups, mode, tile_size, name, geometry: ConvGeometry
) -> torch.Tensor:
    """The engine's convolution recorded for autograd: same arguments as ``zeroskip.conv._conv2d``,
    already checked, plus their geometry."""
    # Unbatched inputs are batched here, where autograd sees the unsqueeze and its backward.
    batched = input if input.dim() == 4 else input.unsqueeze(0)
    out = SparseConv2dFunction.apply(
        batched, weight, bias, stride, padding, dilation, groups, mode, tile_size, name, geometry
    )
    return out if input.dim() == 4 else out.squeeze(0)
