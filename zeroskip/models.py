"""Networks to try zeroskip on: torchvision definitions with seeded random weights (no downloads).

BatchNorm layers get random running statistics and affine parameters, so that they are not the
identity and the inactive region after them holds a non-zero per-channel constant, as in a
trained network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn


def _stem() -> nn.Module:
    # The original experiment's layer.
    return nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)


def _torchvision() -> object:
    try:
        import torchvision
    except ImportError as error:
        raise ImportError("zeroskip's model zoo needs torchvision: pip install 'zeroskip[models]'") from error
    return torchvision


def _classifier(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return getattr(_torchvision().models, name)(weights=None)

    return build


def _fcn_resnet50() -> nn.Module:
    # Output stride 8 (dilated layer3 and layer4), a 3x3 head and bilinear upsampling to the input.
    return _torchvision().models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False)


# Name -> builder of the dense model with default initialisation.
MODELS: dict[str, Callable[[], nn.Module]] = {
    "stem": _stem,
    "resnet18": _classifier("resnet18"),
    "resnet50": _classifier("resnet50"),
    "mobilenet_v2": _classifier("mobilenet_v2"),
    "fcn_resnet50": _fcn_resnet50,
}


def randomize_batchnorm_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every BatchNorm2d of ``model`` random running statistics and affine parameters, in place."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                if module.running_mean is not None:
                    module.running_mean.normal_(0.0, 0.1, generator=generator)
                    module.running_var.uniform_(0.5, 1.5, generator=generator)
                if module.affine:
                    module.weight.uniform_(0.5, 1.5, generator=generator)
                    module.bias.copy_(torch.randn(channels, generator=generator) * 0.1)
    return model


def build_model(name: str, seed: int = 0) -> nn.Module:
    """The dense model ``name`` from :data:`MODELS` in eval mode, with weights and BatchNorm
    statistics drawn from ``seed``.

    Raises:
        ValueError: unknown ``name``.
        ImportError: the model needs torchvision and it is not installed.
    """
    if name not in MODELS:
        raise ValueError(f"`name` must be one of {', '.join(MODELS)}, got {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS[name]()
    generator = torch.Generator().manual_seed(seed)
    return randomize_batchnorm_(model, generator).eval()
