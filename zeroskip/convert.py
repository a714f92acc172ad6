"""In-place conversion of whole models: ``sparsify_`` and ``densify_``."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from .conv import SparseConv2d, _check_mode
from .network import attach, detach

FilterFn = Callable[[nn.Module, str], bool]


def _dense_copy(sparse: SparseConv2d) -> nn.Conv2d:
    dense = nn.Conv2d.__new__(nn.Conv2d)
    state = dict(sparse.__dict__)
    for key in ("mode", "tile_size", "_finite_cache", "_zeroskip_name"):
        state.pop(key, None)
    dense.__dict__.update(state)
    return dense


def sparsify_(model: nn.Module, *, mode: str = "auto", filter_fn: FilterFn | None = None) -> nn.Module:
    """Replace every ``nn.Conv2d`` in ``model`` by a :class:`SparseConv2d` sharing its parameters.

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

    def convert(module: nn.Module, name: str) -> nn.Module:
        if isinstance(module, SparseConv2d):
            module.mode = mode
            module._zeroskip_name = name
            return module
        if type(module) is nn.Conv2d and (filter_fn is None or filter_fn(module, name)):
            sparse = SparseConv2d.from_dense(module, mode=mode)
            sparse._zeroskip_name = name
            return sparse
        for child_name, child in module.named_children():
            replacement = convert(child, f"{name}.{child_name}" if name else child_name)
            if replacement is not child:
                setattr(module, child_name, replacement)
        return module

    model = convert(model, "")
    if not isinstance(model, SparseConv2d):
        attach(model)
    return model


def densify_(model: nn.Module) -> nn.Module:
    """Undo :func:`sparsify_`: every :class:`SparseConv2d` becomes a plain ``nn.Conv2d`` again,
    with the same parameters. Returns the model (or the converted module for a bare one)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, SparseConv2d):
        return _dense_copy(model)
    detach(model)
    for child_name, child in model.named_children():
        replacement = densify_(child)
        if replacement is not child:
            setattr(model, child_name, replacement)
    return model
