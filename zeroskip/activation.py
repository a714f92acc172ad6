"""Feature maps that remember where they can differ from the background, through any layer.

A :class:`SparseActivation` is an ordinary dense tensor (its values are all there, so any code can
read it) that also carries a :class:`Carry`: a pixel activity map, off wherever the value is known
to equal a :class:`~zeroskip._background.Background` field. Layers that act pointwise, pool over
windows, resize by nearest neighbour, add or concatenate keep the carry up to date; sparse
convolutions read it instead of measuring their input (see :mod:`zeroskip.network`). Every other
operation returns a plain tensor, so a network always computes what it would have computed anyway.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._background import Background, aligned
from .engine import native
from .fusion import Epilogue


@dataclass(frozen=True)
class Carry:
    """What a :class:`SparseActivation` knows about its values.

    Attributes:
        activity: uint8 ``(B, 1, H, W)``, 0 where the value equals ``background``.
        background: the values wherever ``activity`` is 0.
    """

    activity: torch.Tensor
    background: Background


class SparseActivation(torch.Tensor):
    """A dense ``(B, C, H, W)`` tensor with a :class:`Carry`; made by :func:`wrap`, read by :func:`carried`.

    A convolution's output can also hold the ops folded into it (see :mod:`zeroskip.fusion`): the
    BatchNorm still to be called on it returns it as it is, and so does the ReLU after that.
    """

    _zeroskip_carry: Carry | None
    _zeroskip_version: int | None
    _zeroskip_folded: Folded | None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if handler is not None:
            result = handler(func, args, kwargs)
            if result is not NotImplemented:
                return result
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
            # Anything this module does not know may have written into its inputs' values, or may
            # hand out their memory (a view, .data, .numpy()) to be written later, unseen.
            mutated = _mutates(func, kwargs)
            for target in (*args, kwargs.get("out")):
                if isinstance(target, SparseActivation) and (mutated or _aliases(result, target)):
                    target._zeroskip_carry = None
                    target._zeroskip_folded = None
        return result


@dataclass(frozen=True)
class Folded:
    """Ops a convolution's output already holds: ``epilogue``'s, its BatchNorm call still to come
    (``batch_norm_pending``), then its ReLU's, if any."""

    epilogue: Epilogue
    batch_norm_pending: bool


def _folded(tensor: object) -> Folded | None:
    if not isinstance(tensor, SparseActivation):
        return None
    with torch._C.DisableTorchFunctionSubclass():
        return getattr(tensor, "_zeroskip_folded", None)


def _set_folded(tensor: SparseActivation, folded: Folded | None) -> None:
    with torch._C.DisableTorchFunctionSubclass():
        tensor._zeroskip_folded = folded


def fold(out: torch.Tensor, epilogue: Epilogue) -> SparseActivation:
    """Mark a convolution's output ``out`` as holding ``epilogue``'s ops (its carry, if any, kept)."""
    result = out if isinstance(out, SparseActivation) else out.as_subclass(SparseActivation)
    _set_folded(result, Folded(epilogue, True))
    return result


def _batch_norm_folded(args, kwargs) -> torch.Tensor | None:
    """The input itself when it already holds this BatchNorm call's result."""
    x = args[0] if args else kwargs.get("input")
    folded = _folded(x)
    if folded is None or not folded.batch_norm_pending or not folded.epilogue.is_call(args, kwargs):
        return None
    if folded.epilogue.relu is not None:
        _set_folded(x, Folded(folded.epilogue, False))
        return x
    return _last_folded(x)


def _relu_folded(args, kwargs) -> torch.Tensor | None:
    """The input itself when a folded ReLU already ran on it (its only consumer: see :mod:`zeroskip.fusion`)."""
    x = args[0] if args else kwargs.get("input")
    folded = _folded(x)
    if folded is None or folded.batch_norm_pending or folded.epilogue.relu is None:
        return None
    return _last_folded(x)


def _last_folded(x: SparseActivation) -> torch.Tensor:
    """``x`` after its last folded op's call: unmarked, and plain when it carries nothing (so that
    the ops after it do not go through ``__torch_function__``)."""
    _set_folded(x, None)
    return x if carried(x) is not None else plain(x)


def _version(tensor: torch.Tensor) -> int | None:
    # Inference tensors have no version counter; in-place calls are then caught by name only.
    return None if tensor.is_inference() else tensor._version


def carried(tensor: object) -> Carry | None:
    """The carry of ``tensor``, or ``None`` for a plain tensor or one modified since it was set."""
    if not isinstance(tensor, SparseActivation):
        return None
    with torch._C.DisableTorchFunctionSubclass():
        carry = getattr(tensor, "_zeroskip_carry", None)
        if carry is None or _version(tensor) != tensor._zeroskip_version:
            return None
        return carry


def _set_carry(tensor: SparseActivation, carry: Carry | None) -> None:
    with torch._C.DisableTorchFunctionSubclass():
        tensor._zeroskip_carry = carry
        tensor._zeroskip_version = _version(tensor)


def wrap(values: torch.Tensor, activity: torch.Tensor, background: Background) -> torch.Tensor:
    """``values`` as a :class:`SparseActivation`, or as a plain tensor when everything is active.

    Args:
        values: ``(B, C, H, W)``, equal to ``background`` wherever ``activity`` is 0.
        activity: uint8 ``(B, 1, H, W)``.
        background: field of size ``(H, W)``.
    """
    if bool(activity.all()):
        return plain(values)
    result = values if isinstance(values, SparseActivation) else values.as_subclass(SparseActivation)
    _set_carry(result, Carry(activity, background))
    return result


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """The same values as an ordinary ``torch.Tensor`` (no copy)."""
    return tensor.as_subclass(torch.Tensor) if isinstance(tensor, SparseActivation) else tensor


def start(x: torch.Tensor) -> torch.Tensor:
    """Begin carrying a floating-point input ``(B, C, H, W)`` whose inactive pixels are exactly zero."""
    # A float's cast to bool is its ``!= 0`` (NaN active, -0.0 not); on the CPU it runs several
    # times faster than ``ne(0)``, and OR-ing the channel planes faster than reducing over channels:
    # a 768x576 RGB frame 2.0 -> 0.4 ms at 1 thread.
    active = x[:, 0:1].bool()
    for channel in range(1, x.shape[1]):
        active |= x[:, channel : channel + 1].bool()
    return wrap(x, active.view(torch.uint8), Background.constant(x.new_zeros(1, x.shape[1]), tuple(x.shape[2:])))


def dilate(
    activity: torch.Tensor,
    out_size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pad: tuple[int, int],
) -> torch.Tensor:
    """Activity of a windowed op's output: whether the window of each output reads an active pixel.

    Args:
        activity: uint8 ``(B, 1, H, W)``.
        out_size: ``(H_out, W_out)`` of the op; output ``i`` reads rows
            ``i * stride - pad + dilation * t`` for ``0 <= t < kernel`` (outside the image: inactive).
        kernel, stride, dilation, pad: per axis (rows, columns); ``pad`` is the leading padding.

    Returns:
        uint8 ``(B, 1, H_out, W_out)``: ``activity`` itself where the op moves nothing.
    """
    axes = [
        (dim, n, k, s, d, p)
        for dim, n, k, s, d, p in zip((2, 3), out_size, kernel, stride, dilation, pad)
        if not (k == 1 and s == 1 and p == 0 and n == activity.shape[dim])
    ]
    if not axes:
        return activity
    # One native pass where the library is built; the torch ops below cost 10-20x more.
    dilated = native.dilate(activity, out_size, kernel, stride, dilation, pad)
    if dilated is not None:
        return dilated
    for dim, n, k, s, d, p in axes:
        span = (n - 1) * s + 1
        pads = [0, 0, 0, 0]
        pads[2 * (3 - dim)] = p
        pads[2 * (3 - dim) + 1] = span + d * (k - 1) - activity.shape[dim] - p
        padded = F.pad(activity, pads)
        # Maximum of shifted copies: along rows strided, along columns dense then subsampled
        # (a strided innermost dimension is slow); max_pool2d is far slower on one channel.
        if dim == 2:
            shifted = [padded[:, :, t * d : t * d + span : s] for t in range(k)]
        else:
            shifted = [padded[..., t * d : t * d + span] for t in range(k)]
        result = shifted[0].clone()
        for view in shifted[1:]:
            torch.maximum(result, view, out=result)
        activity = result if dim == 2 or s == 1 else result[..., ::s].contiguous()
    return activity


@functools.lru_cache(maxsize=1024)
def _in_place(func: Callable) -> bool:
    """Whether ``func`` writes into its first argument, by PyTorch's naming (``add_``, ``__iadd__``)."""
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i") or name == "__setitem__"


def _aliases(result: object, tensor: torch.Tensor) -> bool:
    """Whether ``result`` (other than ``tensor`` itself) exposes ``tensor``'s memory."""
    if result is tensor:
        return False
    if isinstance(result, torch.Tensor):
        return result.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
    if isinstance(result, (tuple, list)):
        return any(_aliases(item, tensor) for item in result)
    return isinstance(result, (np.ndarray, torch.UntypedStorage, torch.TypedStorage, memoryview))


def _mutates(func: Callable, kwargs: dict) -> bool:
    return _in_place(func) or bool(kwargs.get("inplace")) or "out" in kwargs


def _spatially_constant(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` broadcasts against ``(B, C, H, W)`` without varying over H and W."""
    if tensor.dim() < 2:
        return tensor.numel() == 1
    return tensor.dim() <= 4 and tensor.shape[-2] == 1 and tensor.shape[-1] == 1


def _union(activities: Sequence[torch.Tensor], batch: int) -> torch.Tensor | None:
    union = activities[0]
    for activity in activities[1:]:
        union = torch.maximum(union, activity)
    if union.shape[0] == batch:
        return union
    return union.expand(batch, -1, -1, -1) if union.shape[0] == 1 else None


def _pointwise(func, args, kwargs, inputs: Sequence[int] | None = None):
    """Any op whose output pixel depends only on the same pixel of its carried inputs.

    ``inputs`` lists the positions of the feature-map arguments (all tensor arguments when
    ``None``; those that are not carried must then be constant over H and W).
    """
    if "out" in kwargs:
        return NotImplemented
    positions = inputs if inputs is not None else [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    carries = {}
    for i in positions:
        carry = carried(args[i]) if i < len(args) else None
        if carry is None and (inputs is not None or not _spatially_constant(args[i])):
            return NotImplemented
        if carry is not None:
            carries[i] = carry
    if not carries or inputs is None and any(
        isinstance(v, torch.Tensor) and not _spatially_constant(v) for v in kwargs.values()
    ):
        return NotImplemented
    sizes = {c.background.size for c in carries.values()}
    if len(sizes) != 1:
        return NotImplemented
    in_place = _mutates(func, kwargs)
    with torch._C.DisableTorchFunctionSubclass():
        result = func(*args, **kwargs)
    if in_place:
        # Its carry is stale from here on; the one computed below replaces it.
        _set_carry(args[0], None)
        _set_folded(args[0], None)
    if not isinstance(result, torch.Tensor):
        return result
    # An op in place returns its SparseActivation argument: its shape is read without dispatch.
    values = plain(result)
    if values.dim() != 4 or tuple(values.shape[2:]) != sizes.pop():
        return values
    activity = _union([c.activity for c in carries.values()], values.shape[0])
    if activity is None:
        return values
    fields = dict(zip(carries, aligned([c.background for c in carries.values()])))
    # Cores are shared between tensors: an op in place by name runs on a copy.
    core_args = [
        (fields[i].core.clone() if i == 0 and _in_place(func) else fields[i].core) if i in fields else a
        for i, a in enumerate(args)
    ]
    core_kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    with torch._C.DisableTorchFunctionSubclass():
        core = func(*core_args, **core_kwargs)
    some = next(iter(fields.values()))
    return wrap(result, activity, Background(core, some.size, some.rows, some.cols))


def _argument(args, kwargs, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _batch_norm(func, args, kwargs):
    done = _batch_norm_folded(args, kwargs)
    if done is not None:
        return done
    # Inference statistics act per channel, pointwise; batch statistics depend on every pixel.
    if _argument(args, kwargs, 5, "training", False) or _argument(args, kwargs, 1, "running_mean") is None:
        return NotImplemented
    return _pointwise(func, args, kwargs, inputs=[0])


def _relu(func, args, kwargs):
    done = _relu_folded(args, kwargs)
    return done if done is not None else _pointwise(func, args, kwargs)


def _dropout(func, args, kwargs):
    if _argument(args, kwargs, 2, "training", True):
        return NotImplemented
    return args[0] if carried(args[0]) is not None else NotImplemented


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _windowed(x, result, core_op, kernel, stride, padding, dilation, compute=None):
    """Carry through a pooling op whose output reads a window of ``x``; ``core_op`` is the op as a
    function of one tensor. ``result`` is its output, or its output size when ``compute(activity,
    background)`` is to compute only the active outputs."""
    carry = carried(x)
    if isinstance(result, torch.Tensor) and result.dim() != 4:
        return result
    out_size = tuple(result.shape[2:]) if isinstance(result, torch.Tensor) else result
    kernel, padding, dilation = _pair(kernel), _pair(padding), _pair(dilation)
    stride = _pair(stride) if stride is not None and len(_as_list(stride)) else kernel
    activity = dilate(carry.activity, out_size, kernel, stride, dilation, padding)
    window = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    background = carry.background.windowed(core_op, out_size, window, stride, padding)
    if not isinstance(result, torch.Tensor):
        result = compute(activity, background)
    return wrap(result, activity, background)


def _as_list(value) -> list:
    return list(value) if isinstance(value, (tuple, list)) else [value]


# Above this fraction of active outputs a pooling layer runs whole: boxes would cover most of it.
_SPARSE_POOL_MAX_ACTIVE = 0.5
# Active rows (columns) this close are pooled in one box: one more call costs more than the gap.
_BOX_GAP = 4


def active_boxes(activity: torch.Tensor) -> list[tuple[int, int, int, int, int]]:
    """Boxes ``(image, top, bottom, left, right)`` covering the active pixels of ``activity``
    ``(B, 1, H, W)``: bands of active rows, each split into runs of active columns."""

    def runs(flags: list[bool]) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        for index, flag in enumerate(flags):
            if flag:
                if found and index - found[-1][1] <= _BOX_GAP:
                    found[-1] = (found[-1][0], index + 1)
                else:
                    found.append((index, index + 1))
        return found

    boxes = []
    for image, rows in enumerate(activity[:, 0].amax(2).tolist()):
        for top, bottom in runs(rows):
            columns = activity[image, 0, top:bottom].amax(0).tolist()
            boxes.extend((image, top, bottom, left, right) for left, right in runs(columns))
    return boxes


def _sparse_max_pool(x: torch.Tensor, out_size, kernel, stride, padding, dilation, activity, background):
    """Max pooling computed only at the active outputs; the rest is the background.

    The native pass (float32 on the CPU) writes each output once. Otherwise the background is
    filled and each box around active outputs pooled with ``F.max_pool2d``, its input window read
    with explicit ``-inf`` padding, which is what max pooling pads with, so every computed value
    equals the whole pooling's.
    """
    x = plain(x)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = x.new_empty((x.shape[0], x.shape[1], *out_size)).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    field = (background.core, background.rows, background.cols)
    if native.max_pool(x, out, kernel, stride, dilation, padding, activity, field):
        return out
    background.fill(out)
    window = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    for image, top, bottom, left, right in active_boxes(activity):
        first = [top * stride[0] - padding[0], left * stride[1] - padding[1]]
        last = [(bottom - 1) * stride[0] + window[0], (right - 1) * stride[1] + window[1]]
        last = [end - pad for end, pad in zip(last, padding)]
        height, width = x.shape[2:]
        rows = slice(max(first[0], 0), min(last[0], height))
        region = x[image : image + 1, :, rows, max(first[1], 0) : min(last[1], width)]
        pads = (max(-first[1], 0), max(last[1] - width, 0), max(-first[0], 0), max(last[0] - height, 0))
        if any(pads):
            region = F.pad(region, pads, value=float("-inf"))
        out[image : image + 1, :, top:bottom, left:right] = F.max_pool2d(region, kernel, stride, 0, dilation)
    return out


def _pool_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of PyTorch's pooling along one axis."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    # A last window starting in the right padding is dropped.
    return out - 1 if ceil_mode and (out - 1) * stride >= size + padding else out


def _pool(func, args, kwargs, names: tuple[str, ...]):
    carry = carried(args[0])
    if carry is None:
        return NotImplemented
    options = {name: _argument(args, kwargs, i + 1, name) for i, name in enumerate(names)}
    if options.get("return_indices"):
        return NotImplemented
    kernel, stride = options["kernel_size"], options["stride"]
    padding, dilation = options["padding"] or 0, options.get("dilation") or 1

    def core_op(core: torch.Tensor) -> torch.Tensor:
        with torch._C.DisableTorchFunctionSubclass():
            return func(core, *args[1:], **kwargs)

    x = args[0]
    if func is F.max_pool2d and float(carry.activity.float().mean()) < _SPARSE_POOL_MAX_ACTIVE:
        geometry = [_pair(v) for v in (kernel, stride if stride else kernel, padding, dilation)]
        # ceil_mode only decides the output size.
        result = tuple(_pool_size(n, *axis, bool(options["ceil_mode"])) for n, *axis in zip(x.shape[2:], *geometry))
        compute = functools.partial(_sparse_max_pool, x, result, *geometry)
    else:
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
        compute = None
    return _windowed(x, result, core_op, kernel, stride, padding, dilation, compute)


def _max_pool2d(func, args, kwargs):
    return _pool(func, args, kwargs, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"))


def _avg_pool2d(func, args, kwargs):
    return _pool(func, args, kwargs, ("kernel_size", "stride", "padding", "ceil_mode"))


def _adaptive_avg_pool2d(func, args, kwargs):
    """Carried when the output size divides the input size: it is then an average pool."""
    x = args[0]
    if carried(x) is None or x.dim() != 4:
        return NotImplemented
    height, width = x.shape[2:]
    out = _as_list(_argument(args, kwargs, 1, "output_size"))
    out = (out[0] or height, out[-1] or width)
    if height % out[0] or width % out[1] or out == (1, 1):
        # A single output pixel (global pooling) has nothing left to skip.
        return NotImplemented
    kernel = (height // out[0], width // out[1])
    with torch._C.DisableTorchFunctionSubclass():
        result = func(*args, **kwargs)
    return _windowed(x, result, lambda core: F.avg_pool2d(core, kernel), kernel, kernel, 0, 1)


def _interpolate(func, args, kwargs):
    carry = carried(args[0])
    if carry is None or args[0].dim() != 4 or _argument(args, kwargs, 3, "mode", "nearest") not in (
        "nearest", "nearest-exact"
    ):
        return NotImplemented
    with torch._C.DisableTorchFunctionSubclass():
        result = func(*args, **kwargs)
        height, width = args[0].shape[2:]
        # Let the op itself say which input row and column each output pixel reads.
        rows = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1).expand(1, 1, height, width)
        cols = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width).expand(1, 1, height, width)
        row_source = func(rows, *args[1:], **kwargs)[0, 0, :, 0].long().tolist()
        col_source = func(cols, *args[1:], **kwargs)[0, 0, 0, :].long().tolist()
        activity = func(carry.activity, *args[1:], **kwargs)
    return wrap(result, activity, carry.background.resample(row_source, col_source))


def _cat(func, args, kwargs):
    tensors = _argument(args, kwargs, 0, "tensors")
    dim = _argument(args, kwargs, 1, "dim", 0)
    carries = [carried(t) for t in tensors]
    if not tensors or any(c is None for c in carries) or tensors[0].dim() != 4 or dim not in (1, -3):
        return NotImplemented
    with torch._C.DisableTorchFunctionSubclass():
        result = func(*args, **kwargs)
    activity = _union([c.activity for c in carries], result.shape[0])
    if activity is None:
        return plain(result)
    fields = aligned([c.background for c in carries])
    batch = max(f.core.shape[0] for f in fields)
    core = torch.cat([f.core.expand(batch, -1, -1, -1) for f in fields], 1)
    return wrap(result, activity, Background(core, fields[0].size, fields[0].rows, fields[0].cols))


def _handlers() -> dict[Callable, Callable]:
    T = torch.Tensor
    pointwise = [
        F.relu6, F.hardtanh, F.hardtanh_, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_, F.selu, F.celu, F.gelu,
        F.silu, F.mish, F.hardswish, F.hardsigmoid, F.softplus,
        F.sigmoid, torch.sigmoid, torch.sigmoid_, T.sigmoid, T.sigmoid_,
        F.tanh, torch.tanh, torch.tanh_, T.tanh, T.tanh_,
        torch.clamp, T.clamp, T.clamp_, torch.neg, T.neg, T.__neg__,
        torch.add, T.add, T.add_, T.__add__, T.__radd__, T.__iadd__,
        torch.sub, T.sub, T.sub_, T.__sub__, T.__rsub__, T.__isub__,
        torch.mul, T.mul, T.mul_, T.__mul__, T.__rmul__, T.__imul__,
        torch.div, T.div, T.div_, T.__truediv__, T.__rtruediv__, T.__itruediv__, T.__rdiv__,
    ]
    table = dict.fromkeys(pointwise, _pointwise)
    table.update(dict.fromkeys([F.relu, F.relu_, torch.relu, torch.relu_, T.relu, T.relu_], _relu))
    table.update({
        F.batch_norm: _batch_norm,
        F.dropout: _dropout, F.dropout2d: _dropout, F.alpha_dropout: _dropout, F.feature_alpha_dropout: _dropout,
        F.max_pool2d: _max_pool2d,
        F.avg_pool2d: _avg_pool2d,
        F.adaptive_avg_pool2d: _adaptive_avg_pool2d,
        F.interpolate: _interpolate,
        torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat,
    })
    return table


_HANDLERS = _handlers()
