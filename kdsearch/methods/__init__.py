"""Method registry. A method is an ``nn.Module`` whose constructor arguments are its
hyperparameters and whose ``forward(student, targets, teacher, inputs)`` returns
``{"loss": total, <term>: value, ...}``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

from torch import nn

from kdsearch.errors import UserError, lookup
from kdsearch.methods.at import AttentionTransfer
from kdsearch.methods.ce import CrossEntropy
from kdsearch.methods.dml import DeepMutualLearning
from kdsearch.methods.kd import HintonKD
from kdsearch.methods.objective import Objective, Outputs

METHODS = {"ce": CrossEntropy, "kd": HintonKD, "at": AttentionTransfer, "dml": DeepMutualLearning}

# Keyword-only constructor arguments filled in by the trainer, not hyperparameters.
_CONTEXT = ("objective", "make_peer")


def method_settings(name: str) -> dict[str, object]:
    """A method's hyperparameters and their defaults."""
    cls = lookup(METHODS, name, "method")
    return {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.name not in _CONTEXT and p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def build_method(name: str, args: Mapping[str, object], *, objective: Objective, make_peer: Callable[[], nn.Module]) -> nn.Module:
    """Instantiate a method; unknown or invalid settings are a one-line UserError."""
    cls = lookup(METHODS, name, "method")
    valid = method_settings(name)
    for key in args:
        if key not in valid:
            listed = ", ".join(valid) or "none"
            raise UserError(f"method {name!r} has no setting {key!r}: its settings are {listed}")
    context = {"objective": objective, "make_peer": make_peer}
    params = inspect.signature(cls).parameters
    try:
        return cls(**args, **{k: v for k, v in context.items() if k in params})
    except (TypeError, ValueError) as exc:
        raise UserError(f"method {name!r}: {exc}") from None


__all__ = ["METHODS", "Objective", "Outputs", "build_method", "method_settings"]
