"""Method registry: a plain dict of ``kdsearch.methods.base.Method`` subclasses (the contract
a method keeps with the trainer is written there)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping

from torch import nn

from kdsearch.values import coerce
from kdsearch.errors import UserError, lookup
from kdsearch.methods.at import AttentionTransfer
from kdsearch.methods.base import Method
from kdsearch.methods.ce import CrossEntropy
from kdsearch.methods.dml import DeepMutualLearning
from kdsearch.methods.kd import HintonKD
from kdsearch.methods.task_loss import TaskLoss, Outputs
from kdsearch.models.imported import import_object, is_import_path

METHODS = {"ce": CrossEntropy, "kd": HintonKD, "at": AttentionTransfer, "dml": DeepMutualLearning}

# Keyword-only constructor arguments filled in by the trainer, not hyperparameters.
_CONTEXT = ("objective", "make_peer")


def method_settings(name: str) -> dict[str, object]:
    """A method's hyperparameters and their defaults."""
    cls = method_class(name)
    return {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.name not in _CONTEXT and p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def method_class(name: str) -> type[Method]:
    """A registered method, or the user's own named by import path (``mymethods:TeacherTop``,
    a ``Method`` subclass; Ray workers get its module as they get the user's models)."""
    if name in METHODS or not is_import_path(str(name)):
        try:
            return lookup(METHODS, name, "method")
        except UserError as exc:
            raise UserError(f"{exc}, or name your own Method subclass as module:Class") from None
    cls = import_object(name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UserError(f"method {name!r} is not a kdsearch Method subclass: subclass kdsearch.methods.base.Method")
    return cls


def check_settings(name: str, args: Mapping[str, object]) -> dict:
    """The settings, each checked against its declared type (``--set temperature=abc`` is a
    one-line error naming the setting, the value and the type), unknown keys refused."""
    valid = method_settings(name)
    hints = typing.get_type_hints(method_class(name).__init__)
    out = {}
    for key, value in args.items():
        if key not in valid:
            listed = ", ".join(valid) or "none"
            raise UserError(f"method {name!r} has no setting {key!r}: its settings are {listed}")
        out[key] = coerce(value, hints[key], f"method {name!r}: {key}") if key in hints else value
    return out


def resolve_settings(name: str, args: Mapping[str, object]) -> dict:
    """Every setting of method ``name``: its defaults, with ``args`` (checked) over them."""
    return {**method_settings(name), **check_settings(name, args)}


def build_method(name: str, args: Mapping[str, object], *, objective: TaskLoss, make_peer: Callable[[], nn.Module]) -> Method:
    """Instantiate a method; unknown or invalid settings are a one-line UserError."""
    cls = method_class(name)
    settings = check_settings(name, args)
    context = {"objective": objective, "make_peer": make_peer}
    params = inspect.signature(cls).parameters
    try:
        return cls(**settings, **{k: v for k, v in context.items() if k in params})
    except (TypeError, ValueError) as exc:
        raise UserError(f"method {name!r}: {exc}") from None


def check_method(name: str, args: Mapping[str, object]) -> None:
    """Build the method once with stand-in models, so that a bad setting is a one-line error
    before any data is loaded or any teacher trained."""
    build_method(name, args, objective=TaskLoss(), make_peer=nn.Identity)


__all__ = [
    "METHODS",
    "Method",
    "TaskLoss",
    "Outputs",
    "build_method",
    "check_method",
    "check_settings",
    "method_class",
    "method_settings",
    "resolve_settings",
]
