"""Intermediate features of any model, by module name, read with forward hooks.

``feature_forward(model, names)`` is the ``x -> (logits, [features])`` call the training
engine uses: a built-in model's own ``forward_with_features`` when no names are given, else
the model's plain forward with a hook on each named module keeping its output. The model
itself is left as it is (its state dict keys stay the user's own).
"""

from __future__ import annotations

import torch
from torch import nn

from kdsearch.errors import UserError
from kdsearch.models.imported import top_level_names


class FeatureTap:
    """``model(x)`` plus the outputs of the named modules, in the order named."""

    def __init__(self, model: nn.Module, names: list[str], role: str = "model"):
        modules = dict(model.named_modules())
        for name in names:
            if name not in modules or not name:
                raise UserError(
                    f"the {role} ({type(model).__name__}) has no module {name!r}: its top-level modules are "
                    f"{', '.join(top_level_names(model)) or 'none'} (features: name modules as model.named_modules() does)"
                )
        self.model = model
        self.names = list(names)
        self.slots: list[torch.Tensor | None] = [None] * len(names)
        self.handles = [modules[n].register_forward_hook(self._keeper(i)) for i, n in enumerate(names)]

    def _keeper(self, i: int):
        def keep(module, args, output):
            self.slots[i] = output

        return keep

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits = self.model(x)
        features = list(self.slots)
        self.slots[:] = [None] * len(self.slots)
        return logits, features

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class LogitsOnly:
    """A model that names no features: its logits and an empty feature list."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.model(x), []

    def close(self) -> None:
        pass


class OwnFeatures:
    """A built-in model's own stages (``forward_with_features``)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.model.forward_with_features(x)

    def close(self) -> None:
        pass


Forward = FeatureTap | LogitsOnly | OwnFeatures


def feature_forward(model: nn.Module, names: list[str] | None = None, role: str = "model") -> Forward:
    """``x -> (logits, features)`` for ``model``; ``close()`` it when done."""
    if names:
        return FeatureTap(model, names, role)
    if hasattr(model, "forward_with_features"):
        return OwnFeatures(model)
    return LogitsOnly(model)
