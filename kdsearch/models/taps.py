"""Intermediate features of any model, by module name, read with forward hooks.

``feature_forward(model, names)`` is the ``x -> (logits, [features], embedding)`` call the
training engine uses: a built-in model's own ``forward_with_features`` when no names are given,
else the model's plain forward with a hook on each named module keeping its output. With
``embedding=True`` a hook on the classifier head (the last linear layer) keeps its input, the
pooled embedding the relation methods read (None otherwise). The model itself is left as it is
(its state dict keys stay the user's own).
"""

from __future__ import annotations

import torch
from torch import nn

from kdsearch.errors import UserError
from kdsearch.models.imported import head_name, top_level_names


class EmbeddingKeeper:
    """The input of ``model``'s classifier head (its last ``nn.Linear``), flattened: the pooled
    embedding before the classifier, kept at each forward."""

    def __init__(self, model: nn.Module, role: str = "model"):
        head = head_name(model)
        if head is None:
            raise UserError(
                f"the {role} ({type(model).__name__}) has no linear classifier head, and the method reads the embedding "
                "before it: give a model whose last layer is an nn.Linear"
            )
        self.value: torch.Tensor | None = None
        self.handle = model.get_submodule(head).register_forward_pre_hook(self._keep)

    def _keep(self, module, args):
        self.value = torch.flatten(args[0], 1)

    def take(self) -> torch.Tensor | None:
        value, self.value = self.value, None
        return value

    def close(self) -> None:
        self.handle.remove()


class FeatureTap:
    """``model(x)`` plus the outputs of the named modules, in the order named."""

    def __init__(self, model: nn.Module, names: list[str], role: str = "model", embedding: bool = False):
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
        self.embedding = EmbeddingKeeper(model, role) if embedding else None

    def _keeper(self, i: int):
        def keep(module, args, output):
            self.slots[i] = output

        return keep

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        logits = self.model(x)
        features = list(self.slots)
        self.slots[:] = [None] * len(self.slots)
        return logits, features, _taken(self.embedding)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        _close(self.embedding)


class LogitsOnly:
    """A model that names no features: its logits and an empty feature list."""

    def __init__(self, model: nn.Module, role: str = "model", embedding: bool = False):
        self.model = model
        self.embedding = EmbeddingKeeper(model, role) if embedding else None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        return self.model(x), [], _taken(self.embedding)

    def close(self) -> None:
        _close(self.embedding)


class OwnFeatures:
    """A built-in model's own stages (``forward_with_features``)."""

    def __init__(self, model: nn.Module, role: str = "model", embedding: bool = False):
        self.model = model
        self.embedding = EmbeddingKeeper(model, role) if embedding else None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        logits, features = self.model.forward_with_features(x)
        return logits, features, _taken(self.embedding)

    def close(self) -> None:
        _close(self.embedding)


def _taken(keeper: EmbeddingKeeper | None) -> torch.Tensor | None:
    return keeper.take() if keeper is not None else None


def _close(keeper: EmbeddingKeeper | None) -> None:
    if keeper is not None:
        keeper.close()


Forward = FeatureTap | LogitsOnly | OwnFeatures


def feature_forward(model: nn.Module, names: list[str] | None = None, role: str = "model", embedding: bool = False) -> Forward:
    """``x -> (logits, features, embedding or None)`` for ``model``; ``close()`` it when done."""
    if names:
        return FeatureTap(model, names, role, embedding)
    if hasattr(model, "forward_with_features"):
        return OwnFeatures(model, role, embedding)
    return LogitsOnly(model, role, embedding)
