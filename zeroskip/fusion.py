"""Fold the inference BatchNorm (and ReLU) that follows a sparse convolution into its output writes.

In a carried forward the BatchNorm after a convolution reads and writes the whole feature map
again, and so does its ReLU: on resnet18 at 768x576 that is about a sixth of a sparse frame. When
the convolution's output feeds that BatchNorm and nothing else (and the BatchNorm's feeds only a
ReLU), the native executor applies both to each value it computes (``value * scale + shift`` in one
rounding, as PyTorch's CPU BatchNorm does, then ``max(., 0)``) and the background it fills is the
field after both. The BatchNorm call that follows (and the ReLU) then finds its input already done
and returns it, without a pass over the map.

:func:`find_epilogues` reads the producer and consumers of each convolution from a
``torch.fx`` trace of the model, as ``torch.ao``'s fusion does; where a model does not trace, its
children are traced one by one, and what does not trace is not fused. At every call
:meth:`Epilogue.ready` checks that the fusion still holds: the BatchNorm still in its place, in
inference mode with running statistics, no hooks that would see the values in between.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ._background import Background

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
_RELU_METHODS = ("relu", "relu_")


class Epilogue:
    """The inference BatchNorm, and whether a ReLU after it, folded into one convolution's writes.

    Attributes:
        batch_norm: the ``nn.BatchNorm2d`` applied to the convolution's output.
        relu: the ``nn.ReLU`` module after it, ``True`` for a ReLU function or method, ``None``: none.
    """

    def __init__(self, batch_norm: nn.BatchNorm2d, relu: nn.Module | bool | None,
                 places: list[tuple[nn.Module, str]]) -> None:
        self.batch_norm = batch_norm
        self.relu = relu
        # Where the model holds the BatchNorm and ReLU modules: replaced since, no fusion.
        self._places = [(weakref.ref(parent), name, module) for parent, name, module in places]
        self._coefficients: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        self._after: tuple[Background, tuple, Background] | None = None

    def __deepcopy__(self, memo: dict) -> Epilogue:
        # The model's deep copy holds copies of the modules: the epilogue follows them.
        copied = Epilogue.__new__(Epilogue)
        memo[id(self)] = copied
        copied.batch_norm = copy.deepcopy(self.batch_norm, memo)
        copied.relu = copy.deepcopy(self.relu, memo) if isinstance(self.relu, nn.Module) else self.relu
        copied._places = [
            (weakref.ref(copy.deepcopy(parent(), memo)), name, copy.deepcopy(module, memo))
            for parent, name, module in self._places
            if parent() is not None
        ]
        copied._coefficients = copied._after = None
        return copied

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_places"] = [(parent(), name, module) for parent, name, module in self._places]
        state["_coefficients"] = state["_after"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        state["_places"] = [(weakref.ref(parent), name, module) for parent, name, module in state["_places"]]
        self.__dict__.update(state)

    def ready(self, conv: nn.Module, dtype: torch.dtype) -> bool:
        """Whether the fusion holds for this call of ``conv`` on values of ``dtype``."""
        bn = self.batch_norm
        if bn.training or bn.running_mean is None or bn.running_var is None:
            return False
        if any(t is not None and t.dtype != dtype for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)):
            return False
        for parent, name, module in self._places:
            owner = parent()
            if owner is None or owner._modules.get(name) is not module:
                return False
        # A hook would see the values between the convolution and the last folded op.
        hooked = [conv._forward_hooks, bn._forward_pre_hooks]
        if isinstance(self.relu, nn.Module):
            hooked += [bn._forward_hooks, self.relu._forward_pre_hooks]
        return not any(hooked) and not (
            nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
        )

    def _key(self) -> tuple | None:
        """What the folded values depend on, or ``None`` where a parameter's changes cannot be seen
        (an inference tensor has no version counter)."""
        bn = self.batch_norm
        tensors = [t for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var) if t is not None]
        if any(t.is_inference() for t in tensors):
            return None
        return (bn.eps, bn.weight is None, bn.bias is None, *[(t.data_ptr(), t._version) for t in tensors])

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` per channel, computed as PyTorch's CPU BatchNorm computes them."""
        key = self._key()
        if key is not None and self._coefficients is not None and self._coefficients[0] == key:
            return self._coefficients[1], self._coefficients[2]
        bn = self.batch_norm
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            bias = bn.bias.double() if bn.bias is not None else 0.0
            # The shift rounded once, as a fused multiply-add gives it.
            shift = (bias - bn.running_mean.double() * scale.double()).to(scale.dtype)
        self._coefficients = (key, scale.contiguous(), shift.contiguous())
        return self._coefficients[1], self._coefficients[2]

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """The folded ops on ``values`` ``(B, C, H, W)``, by PyTorch itself (see :func:`finish`)."""
        bn = self.batch_norm
        with torch._C.DisableTorchFunctionSubclass():
            out = F.batch_norm(values, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
            return torch.relu_(out) if self.relu is not None else out

    def after(self, field: Background) -> Background:
        """The background ``field`` after the folded ops (the same result for the same field and parameters)."""
        key = self._key()
        if key is not None and self._after is not None and self._after[0] is field and self._after[1] == key:
            return self._after[2]
        result = field.map(self.apply)
        self._after = (field, key, result)
        return result

    def is_call(self, args: tuple, kwargs: dict) -> bool:
        """Whether ``F.batch_norm(*args, **kwargs)`` is this epilogue's BatchNorm in inference."""
        names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        given = dict(zip(names, args), **kwargs)
        bn = self.batch_norm
        return (
            given.get("running_mean") is bn.running_mean
            and given.get("running_var") is bn.running_var
            and given.get("weight") is bn.weight
            and given.get("bias") is bn.bias
            and not given.get("training", False)
            and given.get("eps", 1e-5) == bn.eps
        )

    def describe(self) -> str:
        return "+bn+relu" if self.relu is not None else "+bn"


def finish(values: torch.Tensor, epilogue: Epilogue | None) -> torch.Tensor:
    """Convolution outputs ``values`` after ``epilogue``'s ops (none: as they are)."""
    return values if epilogue is None else epilogue.apply(values)


# fx swaps nn.Module's __call__ and __getattr__ for the whole process while it traces and puts back
# what it found: two traces ending out of order would leave one's wrapper installed for good.
_TRACING = threading.Lock()


class _Tracer(fx.Tracer):
    """Traces only the forwards of modules that hold some of ``convs``: tracing runs a forward (on
    proxies), so the others, leaves here, are never run by it (a module that counts its calls
    would count one more), and the convolutions' own forwards are not traceable.

    While it traces, fx sends every thread's module calls and attribute reads to it: those of other
    threads (their own models, running meanwhile) go on untouched."""

    def __init__(self, convs: set[int], holders: set[int]) -> None:
        super().__init__()
        self._convs = convs
        self._holders = holders
        self._thread = threading.get_ident()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) in self._convs or id(m) not in self._holders

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _owner(root: nn.Module, target: str) -> tuple[nn.Module, str]:
    parent, _, name = target.rpartition(".")
    return (root.get_submodule(parent) if parent else root), name


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _relu_of(node: fx.Node, root: nn.Module) -> tuple[nn.Module | bool, list] | None:
    """The ReLU that is ``node``'s only consumer, with the place of its module (if one)."""
    user = _single_user(node)
    if user is None or not user.args or user.args[0] is not node or len(user.args) > 1:
        return None
    if set(user.kwargs) - {"inplace"}:
        return None
    if user.op == "call_module":
        module = root.get_submodule(user.target)
        if type(module) is nn.ReLU:
            return module, [(*_owner(root, user.target), module)]
    elif (user.op == "call_function" and user.target in _RELU_FUNCTIONS) or (
        user.op == "call_method" and user.target in _RELU_METHODS
    ):
        return True, []
    return None


def _graph_epilogues(root: nn.Module, graph: fx.Graph, convs: set[int]) -> dict[int, Epilogue | None]:
    """Per convolution called in ``graph``: its epilogue, or ``None`` where one of its calls has none."""
    found: dict[int, Epilogue | None] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        conv = root.get_submodule(node.target)
        if id(conv) not in convs:
            continue
        user = _single_user(node)
        epilogue = None
        if user is not None and user.op == "call_module" and user.args == (node,) and not user.kwargs:
            bn = root.get_submodule(user.target)
            if type(bn) is nn.BatchNorm2d:
                relu = _relu_of(user, root)
                places = [(*_owner(root, user.target), bn), *(relu[1] if relu else [])]
                epilogue = Epilogue(bn, relu[0] if relu else None, places)
        previous = found.get(id(conv), epilogue)
        same = previous is not None and epilogue is not None and (
            previous.batch_norm is epilogue.batch_norm and previous.relu is epilogue.relu
        )
        found[id(conv)] = epilogue if same else None
    return found


def find_epilogues(model: nn.Module, convs: Iterable[nn.Module]) -> dict[int, Epilogue]:
    """The epilogue of each of ``convs`` (by ``id``) in ``model``, where its output goes to an
    ``nn.BatchNorm2d`` and nowhere else in every call of it that a trace of the model shows."""
    leaves = {id(c) for c in convs}
    holders = {id(m) for m in model.modules() if id(m) not in leaves and any(id(d) in leaves for d in m.modules())}
    found: dict[int, Epilogue | None] = {}

    def visit(module: nn.Module) -> None:
        if id(module) not in holders:
            return
        try:
            with _TRACING:
                graph = _Tracer(leaves, holders).trace(module)
        except Exception:  # noqa: BLE001 - a model fx cannot trace is fused in the parts it can
            for child in module.children():
                visit(child)
            return
        for key, epilogue in _graph_epilogues(module, graph, leaves).items():
            found[key] = epilogue if found.get(key, epilogue) is epilogue else None

    visit(model)
    return {key: epilogue for key, epilogue in found.items() if epilogue is not None}
