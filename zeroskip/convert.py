"""In-place conversion of whole models: ``sparsify_`` and ``densify_``."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from .conv import SparseConv2d, _check_mode
from .fusion import find_epilogues
from .network import BACKGROUNDS, attach, detach

FilterFn = Callable[[nn.Module, str], bool]


def _dense_copy(sparse: SparseConv2d) -> nn.Conv2d:
    dense = nn.Conv2d.__new__(nn.Conv2d)
    state = dict(sparse.__dict__)
    for key in ("mode", "tile_size", "_zeroskip_name", "_zeroskip_epilogue"):
        state.pop(key, None)
    dense.__dict__.update(state)
    return dense


def _convert_tree(model: nn.Module, leaf: Callable[[nn.Module, str], nn.Module | None]) -> nn.Module:
    """Apply ``leaf(module, qualified_name)`` from the root down: its result replaces the module or,
    when ``None``, the module stays and its children are visited. A module held in several places
    (shared or tied) is visited once and its replacement put in every place, so it stays shared."""
    done: dict[int, nn.Module] = {}

    def visit(module: nn.Module, name: str) -> nn.Module:
        if id(module) in done:
            return done[id(module)]
        replacement = leaf(module, name)
        done[id(module)] = module if replacement is None else replacement
        if replacement is None:
            # Not named_children(): it lists a module held twice only once.
            for child_name, child in list(module._modules.items()):
                if child is not None:
                    converted = visit(child, f"{name}.{child_name}" if name else child_name)
                    if converted is not child:
                        setattr(module, child_name, converted)
        return done[id(module)]

    return visit(model, "")


def sparsify_(model: nn.Module, *, mode: str = "auto", filter_fn: FilterFn | None = None) -> nn.Module:
    """Replace every ``nn.Conv2d`` in ``model`` by a :class:`SparseConv2d` sharing its parameters.

    Where a ``torch.fx`` trace of the model shows a convolution's output going to an
    ``nn.BatchNorm2d`` and nowhere else (and the BatchNorm's to a ReLU and nowhere else), a carried
    forward in inference mode writes the convolution's outputs after both (see :mod:`zeroskip.fusion`);
    the model's code and modules are not changed. Tracing runs the ``forward`` of the modules that
    hold convolutions once, on proxies (not those of the others).

    What a sparsified model keeps about its parameters (each convolution's output background, the
    folded BatchNorm coefficients) is renewed by every change PyTorch's version counters see:
    in-place ops, ``load_state_dict``, new parameters. Writes through ``.data`` bypass those
    counters: call ``sparsify_`` again after them (with the same ``mode``: it sets every
    convolution's), which computes everything kept anew.

    Args:
        model: the model, converted in place (a bare ``nn.Conv2d`` cannot be replaced in place:
            the converted module is returned instead).
        mode: as in :func:`zeroskip.conv2d`.
        filter_fn: ``filter_fn(module, qualified_name) -> bool`` picks which convolutions to
            convert; all of them when ``None``.

    Returns:
        The model.
    """
    _check_mode(mode)
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"`filter_fn` must be callable or None, got {filter_fn!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")

    def leaf(module: nn.Module, name: str) -> nn.Module | None:
        if isinstance(module, SparseConv2d):
            module.mode = mode
        elif type(module) is nn.Conv2d and (filter_fn is None or filter_fn(module, name)):
            module = SparseConv2d.from_dense(module, mode=mode)
        else:
            return None
        module._zeroskip_name = name
        return module

    model = _convert_tree(model, leaf)
    convs = [module for module in model.modules() if isinstance(module, SparseConv2d)]
    for conv in convs:
        # Everything kept about the parameters is computed again: a write through `.data` (which
        # PyTorch's version counters do not see) is taken in by calling sparsify_ again.
        conv.__dict__.pop("_zeroskip_epilogue", None)
        BACKGROUNDS.forget(conv.weight)
    if not isinstance(model, SparseConv2d):
        # The inference BatchNorm (and ReLU) after a convolution, written with its output.
        epilogues = find_epilogues(model, convs)
        for conv in convs:
            if id(conv) in epilogues:
                conv._zeroskip_epilogue = epilogues[id(conv)]
        attach(model)
    return model


def densify_(model: nn.Module) -> nn.Module:
    """Undo :func:`sparsify_`: every :class:`SparseConv2d` becomes a plain ``nn.Conv2d`` again,
    with the same parameters. Returns the model (or the converted module for a bare one)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")

    def leaf(module: nn.Module, name: str) -> nn.Module | None:
        if isinstance(module, SparseConv2d):
            return _dense_copy(module)
        detach(module)
        return None

    return _convert_tree(model, leaf)
