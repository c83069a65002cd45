"""Model registry. Every model maps images to logits and exposes
``forward_with_features(x) -> (logits, [stage outputs, shallow to deep])`` for the
methods that read intermediate features (Attention Transfer)."""

from __future__ import annotations

from functools import partial

from torch import nn

from kdsearch.errors import UserError, lookup
from kdsearch.models.small_resnet import SmallResNet
from kdsearch.models.torchvision_resnet import TorchvisionResNet

MODELS = {
    "resnet8": partial(SmallResNet, 8),
    "resnet14": partial(SmallResNet, 14),
    "resnet20": partial(SmallResNet, 20),
    "resnet32": partial(SmallResNet, 32),
    "resnet56": partial(SmallResNet, 56),
    "resnet18": partial(TorchvisionResNet, "resnet18"),
    "resnet34": partial(TorchvisionResNet, "resnet34"),
    "resnet50": partial(TorchvisionResNet, "resnet50"),
}

# The small ResNets always use a 3x3 stride-1 stem; only torchvision's take a stem choice.
_TAKES_STEM = {"resnet18", "resnet34", "resnet50"}


def build_model(name: str, num_classes: int, in_channels: int = 3, stem: str = "cifar", width: float = 1.0) -> nn.Module:
    """Build a freshly initialised model from the registry."""
    factory = lookup(MODELS, name, "architecture")
    if not width > 0:
        raise UserError(f"width must be positive, got {width}: use e.g. width: 1.0")
    kwargs = {"num_classes": num_classes, "in_channels": in_channels, "width": width}
    if name in _TAKES_STEM:
        kwargs["stem"] = stem
    try:
        return factory(**kwargs)
    except ValueError as exc:
        raise UserError(f"cannot build {name}: {exc}") from None
