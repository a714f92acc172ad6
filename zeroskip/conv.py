"""The sparse convolution's PyTorch front end: ``zeroskip.conv2d`` and its module ``zeroskip.SparseConv2d``
(argument checks, whole-network carry, profiling; the work is done by :mod:`zeroskip.engine`)."""

from __future__ import annotations

import copy as copy_module
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _profiler, autograd, engine
from ._geometry import _pair, check_conv_args
from .activation import SparseActivation, fold, plain
from .network import carry_conv, in_dense_forward

MODES = ("auto", "dense", "rows", "tiles")


def _check_mode(mode: object) -> str:
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {', '.join(MODES)}, got {mode!r}")
    return mode  # type: ignore[return-value]


def _conv2d(
    input, weight, bias, stride, padding, dilation, groups, mode, tile_size=None, *, name=None, epilogue=None
):
    _check_mode(mode)
    # A carried input's shape is read here without its __torch_function__ (a few microseconds a read).
    values = plain(input)
    g = check_conv_args(values, weight, bias, stride, padding, dilation, groups)
    # Checked here, not where the tiles need it, so that a bad value fails on every path.
    tile_size = _pair(tile_size, "tile_size", minimum=1) if tile_size is not None else None
    if autograd.needs_grad(input, weight, bias) and not engine.dense_reason(input, weight, bias):
        # Forward sparse, backward dense: the Function calls back here with grad mode off.
        return autograd.conv2d(input, weight, bias, stride, padding, dilation, groups, mode, tile_size, name, g)
    timed = _profiler.recording()
    start = time.perf_counter() if timed else 0.0
    unbatched = values.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    carry = carry_conv(x, weight, bias, stride, padding, dilation, groups, g, epilogue)
    if carry is None:
        out, ran, fraction, detail = engine.run(x, weight, bias, padding, g, mode, tile_size)
    else:
        out, ran, fraction, detail = engine.run(
            carry.values, weight, bias, padding, g, carry.mode(mode), tile_size,
            carry.activity, carry.background, carry.epilogue,
        )
        if carry.mode(mode) != mode:
            detail = carry.dense_reason
        out = carry.finish(out)
        if carry.epilogue is not None:
            out = fold(out, carry.epilogue)
    if unbatched:
        out = out.squeeze(0)
    if timed:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        _profiler.record(
            _profiler.CallRecord(
                name, tuple(input.shape), mode, ran, fraction, (time.perf_counter() - start) * 1e3, detail
            )
        )
    return out


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    mode: str = "auto",
    tile_size: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """2-D convolution that skips the outputs whose receptive field is all zeros.

    Same arguments and result as :func:`torch.nn.functional.conv2d`. Skipped outputs are
    exactly the bias (or zero); computed ones come from ``F.conv2d`` on the same values.

    Args:
        input: ``(B, C, H, W)`` or ``(C, H, W)``.
        weight: ``(C_out, C / groups, kH, kW)``.
        bias: ``(C_out,)`` or ``None``.
        stride, padding, dilation, groups: as in ``F.conv2d`` (``padding`` may be ``"same"`` or
            ``"valid"``).
        mode: ``"auto"`` picks per image between filling (all-zero image), tiles, rows and dense;
            ``"tiles"``, ``"rows"`` and ``"dense"`` force one path.
        tile_size: output tile ``(th, tw)`` for the tile path; chosen per layer when ``None``.

    Returns:
        ``(B, C_out, H_out, W_out)`` (or ``(C_out, H_out, W_out)``), with the dtype and memory
        format ``F.conv2d`` gives.

    Raises:
        TypeError, ValueError: bad arguments, naming the argument and the value received.
    """
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, mode, tile_size)


def _untraceable(tool: str) -> str:
    return (
        f"{tool} cannot capture zeroskip.SparseConv2d: what it computes depends on the input's values at run time;"
        " call zeroskip.densify_(model) first (same parameters, plain nn.Conv2d)"
    )


class SparseConv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs :func:`zeroskip.conv2d`. Same constructor, plus ``mode`` and
    ``tile_size``; same parameters and ``state_dict`` keys.

    Example:
        >>> conv = SparseConv2d(3, 64, 7, stride=2, padding=3, bias=False)
        >>> y = conv(masked_frames)  # (B, 3, H, W) -> (B, 64, H/2, W/2)
    """

    def __init__(self, *args, mode: str = "auto", tile_size: int | tuple[int, int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mode = _check_mode(mode)
        self.tile_size = tile_size

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, *, mode: str = "auto", tile_size=None, copy: bool = False) -> SparseConv2d:
        """Wrap an ``nn.Conv2d``'s parameters (shared, or copied with ``copy=True``).

        Args:
            conv: the module to convert; left unchanged.
            mode: as in :func:`zeroskip.conv2d`.
            copy: copy the parameters instead of sharing them.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"`conv` must be an nn.Conv2d, got {type(conv).__name__}")
        if nn.utils.parametrize.is_parametrized(conv):
            # Its parametrized weight is a property of the generated class, lost by the class swap below.
            raise TypeError(f"`conv` must not be parametrized (weight_norm, ...), got {type(conv).__name__}")
        sparse = cls.__new__(cls)
        nn.Module.__init__(sparse)
        # Take every attribute (hyper-parameters, hooks, buffers, parameters) without
        # re-initialising weights, then swap the class.
        sparse.__dict__.update(
            {key: copy_module.copy(value) if isinstance(value, dict) else value for key, value in conv.__dict__.items()}
        )
        if copy:
            for key, param in sparse._parameters.items():
                if param is not None:
                    sparse._parameters[key] = nn.Parameter(param.detach().clone(), param.requires_grad)
        sparse.mode = _check_mode(mode)
        sparse.tile_size = tile_size
        return sparse

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(_untraceable("torch.jit.script"))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return self._forward_captured(input)
        if type(input) is torch.Tensor and (self.mode == "dense" or in_dense_forward()) and not _profiler.recording():
            # Nothing to skip and nothing to record: nn.Conv2d's own call, without zeroskip's overhead.
            return super().forward(input)
        return self._forward(input)

    # Under torch.compile a graph break: the plan depends on the input's values, so it runs eagerly.
    @torch.compiler.disable(reason=_untraceable("torch.compile(fullgraph=True) or torch.export(strict=True)"))
    def _forward_captured(self, input: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            # A captured graph would replay one input's plan on every other input.
            raise RuntimeError(_untraceable("torch.export" if torch.compiler.is_exporting() else "torch.jit.trace"))
        return self._forward(input)

    def _forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            # Pad with the module's mode first, exactly as nn.Conv2d does, then convolve unpadded.
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding: object = 0
        else:
            padding = self.padding
        # The ops after this layer that sparsify_ found foldable into it (see zeroskip.fusion), for a
        # carried input (whose output they would otherwise read and write whole).
        epilogue = self.__dict__.get("_zeroskip_epilogue")
        if epilogue is not None and not (isinstance(input, SparseActivation) and epilogue.ready(self, input.dtype)):
            epilogue = None
        return _conv2d(
            input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups, self.mode,
            self.tile_size, name=getattr(self, "_zeroskip_name", None), epilogue=epilogue,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode!r}"
