"""Whole-network sparse inference: carry the inactive region from layer to layer.

:func:`zeroskip.sparsify_` attaches two hooks to the model. On the way in, a masked input becomes a
:class:`~zeroskip.activation.SparseActivation` (its zero pixels are the inactive region); inside,
each sparse convolution reads the carried activity map instead of measuring its input, computes only
the output tiles that the active region reaches, and fills the rest with the background field the
network produces from an all-background input; on the way out, outputs become plain tensors again.

The carry ends, and the network continues on plain tensors, wherever a layer is not one that keeps
it (see :mod:`zeroskip.activation`) or a convolution runs densely: then the active region has grown
too large to be worth skipping. From there on, and throughout a forward whose input is dense, sparse
convolutions with plain inputs run densely without checking them: nothing is left to skip.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._activity import sampled_density
from ._background import Background
from ._geometry import ConvGeometry
from .activation import SparseActivation, _version, carried, dilate, plain, start, wrap
from .fusion import Epilogue

# Above this sampled pixel density the first convolution runs densely anyway (the engine's own
# early exit), so carrying would only add the cost of the activity map.
_CARRY_MAX_DENSITY = 0.5
# A convolution the engine runs densely (too small to skip, or too active) still passes the carry
# on while at most this fraction of its output is active: later, larger layers may skip the rest.
_DENSE_CARRY_MAX_ACTIVE = 0.5


class _BackgroundCache:
    """The output background of each convolution, kept while its weights and input background
    stay the same: on video every frame has the same background, so it is computed once."""

    def __init__(self) -> None:
        # id(weight) -> (weak reference to the weight, key, input core, output background)
        self._entries: dict[int, tuple] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(weight, bias, args, background: Background):
        versions = [_version(t) for t in (weight, bias) if t is not None]
        if None in versions:
            return None
        pointers = [t.data_ptr() for t in (weight, bias) if t is not None]
        return (*versions, *pointers, bias is None, args, background.size, background.rows, background.cols)

    def _forget(self, key: int) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def forget(self, weight: torch.Tensor) -> None:
        """Drop what is kept for ``weight``: after a change its version counter does not show."""
        self._forget(id(weight))

    def get(self, weight, bias, args, background: Background, compute: Callable[[], Background]) -> Background:
        key = self._key(weight, bias, args, background)
        if key is None:
            return compute()
        with self._lock:
            entry = self._entries.get(id(weight))
        if entry is not None and entry[0]() is weight and entry[1] == key and torch.equal(entry[2], background.core):
            return entry[3]
        result = compute()
        index = id(weight)
        reference = weakref.ref(weight, lambda _: self._forget(index))
        with self._lock:
            self._entries[index] = (reference, key, background.core, result)
        return result


BACKGROUNDS = _BackgroundCache()


@dataclass
class _Forward:
    """A sparsified model forward in progress: whether it is known dense and why, the input shape
    it carries (``None``: no carry), and whether a convolution of it skipped anything."""

    owner: int  # id() of the model
    dense: bool = False
    reason: str = ""
    carried: tuple | None = None
    skipped: bool = False


class _Forwards(threading.local):
    """Per thread, the sparsified model forwards in progress, innermost last."""

    def __init__(self) -> None:
        self.stack: list[_Forward] = []


_FORWARDS = _Forwards()


def in_dense_forward() -> bool:
    """Whether a sparsified model forward known dense (nothing left to skip) is in progress."""
    return bool(_FORWARDS.stack) and _FORWARDS.stack[-1].dense


def _mark_dense(reason: str) -> None:
    if _FORWARDS.stack:
        _FORWARDS.stack[-1].dense = True
        _FORWARDS.stack[-1].reason = reason


@dataclass
class ConvCarry:
    """A convolution of a carried input: what the engine needs, and how to carry its output on.

    Attributes:
        values: the input values, a plain tensor.
        activity: uint8 ``(B, H_out, W_out)``, non-zero at output pixels that may differ from
            the background; ``None`` for a plain input in a forward known dense.
        dense_reason: why the forward is known dense, the reason of the calls :meth:`mode` sends
            to dense.
        epilogue: the ops folded into the output (see :mod:`zeroskip.fusion`), or ``None``.
    """

    values: torch.Tensor
    activity: torch.Tensor | None
    dense_reason: str = ""
    epilogue: Epilogue | None = None
    _out_activity: torch.Tensor | None = None
    _background: Callable[[], Background] | None = None
    _filled: Background | None = field(default=None)

    def mode(self, mode: str) -> str:
        """The engine mode for a layer set to ``mode``: ``"auto"`` runs dense in a forward known dense."""
        return "dense" if self.activity is None and mode == "auto" else mode

    @property
    def background(self) -> Callable[[], Background] | None:
        """What gives the engine the values of the skipped outputs (``None``: the bias)."""
        return None if self.activity is None else self._take_background

    def _take_background(self) -> Background:
        self._filled = self._background()
        return self._filled

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """The convolution's output, carried on unless the engine ran it densely with most of it active."""
        if self._out_activity is None:
            return out
        if self._filled is not None and _FORWARDS.stack:
            _FORWARDS.stack[-1].skipped = True  # the engine filled the background: it skipped work
        if self._filled is None:
            if float(self._out_activity.float().mean()) > _DENSE_CARRY_MAX_ACTIVE:
                _mark_dense(f"carry ended: an earlier layer's output was over {_DENSE_CARRY_MAX_ACTIVE:.0%} active")
                return plain(out)
            self._filled = self._background()
        return wrap(out, self._out_activity, self._filled)


def carry_conv(input, weight, bias, stride, padding, dilation, groups, g: ConvGeometry,
               epilogue: Epilogue | None = None) -> ConvCarry | None:
    """The carry of a convolution call: ``None`` when ``input`` carries nothing, outside a forward
    known dense (4-D inputs only). A carried call folds ``epilogue`` (if any) into its output."""
    carry = carried(input)
    values = plain(input)
    if carry is None or values.dim() != 4:
        return ConvCarry(input, None, _FORWARDS.stack[-1].reason) if in_dense_forward() else None
    out_activity = dilate(
        carry.activity, (g.out_height, g.out_width), g.kernel, g.stride, g.dilation, (g.pad_top, g.pad_left)
    )
    args = (stride, padding, dilation, groups)

    def compute() -> Background:
        def op(core: torch.Tensor) -> torch.Tensor:
            return F.conv2d(core, weight, bias, stride, padding, g.dilation, groups)  # see check_conv_args

        return carry.background.windowed(op, (g.out_height, g.out_width), g.window, g.stride, (g.pad_top, g.pad_left))

    def background() -> Background:
        field = BACKGROUNDS.get(weight, bias, repr(args), carry.background, compute)
        return field if epilogue is None else epilogue.after(field)

    return ConvCarry(values, out_activity[:, 0], epilogue=epilogue, _out_activity=out_activity, _background=background)


# A model whose carried forward skipped nothing (every convolution ran densely: too small or too
# active to skip) stops carrying inputs of that shape, trying again every this many forwards.
_RETRY_CARRY_EVERY = 16
_MEMO_ATTRIBUTE = "_zeroskip_carry_memo"


def _carry_input(module: nn.Module, args: tuple) -> tuple | None:
    if torch.compiler.is_compiling():
        # Graph capture may never call the forward hook that would end the entry (torch.export
        # does not when capture fails); the sparse convolutions run eagerly without a carry.
        return None
    forward = _Forward(id(module))
    _FORWARDS.stack.append(forward)
    kind = _input_kind(module, args[0]) if args else ""
    if kind == "sparse":
        memo = module.__dict__.setdefault(_MEMO_ATTRIBUTE, {})
        shape = tuple(args[0].shape)
        wait = memo.get(shape, 0)
        if wait:
            # Its last carried forward skipped nothing, with the exact activity: per-layer checks
            # of the plain input would not skip either.
            memo[shape] = wait - 1
            kind = "dense"
            forward.reason = (
                f"a recent forward of this input shape skipped nothing (carry retried every {_RETRY_CARRY_EVERY})"
            )
        else:
            forward.carried = shape
    forward.dense = kind == "dense"
    forward.reason = forward.reason or "dense model input"
    return (start(args[0]), *args[1:]) if kind == "sparse" else None


def _input_kind(module: nn.Module, x: object) -> str:
    """``"sparse"`` (carry it), ``"dense"`` (nothing to skip anywhere) or ``""`` (leave it to each layer)."""
    if not isinstance(x, torch.Tensor) or isinstance(x, SparseActivation) or x.dim() != 4:
        return ""
    if not x.is_floating_point() or x.layout != torch.strided or x.numel() == 0:
        return ""
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())):
        # Sparse convolutions run densely under autograd anyway.
        return ""
    return "sparse" if bool((sampled_density(x) <= _CARRY_MAX_DENSITY).any()) else "dense"


def _plain_outputs(module: nn.Module, args: tuple, output):
    if _FORWARDS.stack and _FORWARDS.stack[-1].owner == id(module):
        forward = _FORWARDS.stack.pop()
        if forward.carried is not None:
            memo = module.__dict__.setdefault(_MEMO_ATTRIBUTE, {})
            if forward.skipped:
                memo.pop(forward.carried, None)
            elif len(memo) < 64:  # bounded: one entry per input shape seen
                memo[forward.carried] = _RETRY_CARRY_EVERY
    if isinstance(output, torch.Tensor):
        return plain(output)
    if isinstance(output, (tuple, list)) and any(isinstance(o, SparseActivation) for o in output):
        items = [plain(o) if isinstance(o, torch.Tensor) else o for o in output]
        return type(output)(*items) if hasattr(output, "_fields") else type(output)(items)
    if isinstance(output, dict) and any(isinstance(o, SparseActivation) for o in output.values()):
        result = output.copy()
        for key, value in output.items():
            if isinstance(value, torch.Tensor):
                result[key] = plain(value)
        return result
    return output


_HOOKS_ATTRIBUTE = "_zeroskip_network_hooks"


def attach(model: nn.Module) -> None:
    """Make ``model``'s forward carry the inactive region of its first input through the network
    (done by :func:`zeroskip.sparsify_`). Hooks on its submodules are removed: one entry point."""
    for module in model.modules():
        detach(module)
    setattr(
        model,
        _HOOKS_ATTRIBUTE,
        (
            model.register_forward_pre_hook(_carry_input),
            # Also after an exception, to end the forward's entry in _FORWARDS.
            model.register_forward_hook(_plain_outputs, always_call=True),
        ),
    )


def detach(model: nn.Module) -> None:
    """Undo :func:`attach` (done by :func:`zeroskip.densify_`)."""
    for handle in model.__dict__.pop(_HOOKS_ATTRIBUTE, ()):
        handle.remove()
    model.__dict__.pop(_MEMO_ATTRIBUTE, None)
