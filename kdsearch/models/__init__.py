"""Model registry. Every model maps images to logits. The built-in ones also expose
``forward_with_features(x) -> (logits, [stage outputs, shallow to deep])`` for the methods
that read intermediate features (Attention Transfer); any other model, named by import path
(``mynets:TinyNet``, ``kdsearch.models.imported``), gives them by module name (``taps``)."""

from __future__ import annotations

from functools import partial

from torch import nn

from kdsearch.errors import UserError
from kdsearch.models.imported import build_imported, is_import_path
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

# Built-in names that torchvision also builds: with pretrained weights they mean torchvision's
# own architecture (ImageNet stem), which is what the weights were trained as.
TORCHVISION_NAMES = {"resnet18", "resnet34", "resnet50"}
# The stages Attention Transfer reads from torchvision's ResNets when no features are named.
DEFAULT_FEATURES = {f"torchvision.models:{n}": ["layer1", "layer2", "layer3", "layer4"] for n in TORCHVISION_NAMES}

# The small ResNets always use a 3x3 stride-1 stem; only torchvision's take a stem choice.
_TAKES_STEM = {"resnet18", "resnet34", "resnet50"}


def build_model(
    name: str, num_classes: int, in_channels: int = 3, stem: str = "cifar", width: float = 1.0, args: dict | None = None
) -> nn.Module:
    """A freshly initialised model: a built-in name, or an import path called with ``args``."""
    if is_import_path(name):
        return build_imported(name, num_classes, in_channels, dict(args or {}))
    if args:
        raise UserError(
            f"{name} is built in and takes no arguments ({', '.join(args)}): use student_args/teacher_args with an import path"
        )
    if name not in MODELS:
        raise UserError(
            f"unknown architecture {name!r}: choose one of {', '.join(sorted(MODELS))}, or name your own as module:Name"
        )
    factory = MODELS[name]
    if not width > 0:
        raise UserError(f"width must be positive, got {width}: use e.g. width: 1.0")
    kwargs = {"num_classes": num_classes, "in_channels": in_channels, "width": width}
    if name in _TAKES_STEM:
        kwargs["stem"] = stem
    try:
        return factory(**kwargs)
    except ValueError as exc:
        raise UserError(f"cannot build {name}: {exc}") from None


def feature_names(cfg, role: str, arch: str) -> list[str] | None:
    """The modules whose outputs Attention Transfer reads from the ``role`` ("student" or
    "teacher"): the config's ``features``, else the architecture's known stages (None: a
    built-in model's own)."""
    return cfg.features.get(role) or DEFAULT_FEATURES.get(arch)


def pretrained_arch(name: str) -> str:
    """The architecture pretrained weights of ``name`` belong to (torchvision's for its ResNets)."""
    return f"torchvision.models:{name}" if name in TORCHVISION_NAMES else name
