"""Method registry: a plain dict of ``kdsearch.methods.base.Method`` subclasses (the contract
a method keeps with the trainer is written there)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping

from torch import nn

from kdsearch.errors import UserError, lookup
from kdsearch.methods.at import AttentionTransfer
from kdsearch.methods.base import Method
from kdsearch.methods.ce import CrossEntropy
from kdsearch.methods.crd import ContrastiveRD
from kdsearch.methods.dkd import DecoupledKD
from kdsearch.methods.dml import DeepMutualLearning
from kdsearch.methods.fitnet import FitNet
from kdsearch.methods.kd import HintonKD
from kdsearch.methods.pkt import ProbabilisticKT
from kdsearch.methods.reviewkd import ReviewKD
from kdsearch.methods.rkd import RelationalKD
from kdsearch.methods.sp import SimilarityPreserving
from kdsearch.methods.task_loss import Outputs, TaskLoss
from kdsearch.models.imported import import_object, is_import_path
from kdsearch.settings import schedules
from kdsearch.settings.typed import coerce

METHODS = {
    "ce": CrossEntropy,
    "kd": HintonKD,
    "at": AttentionTransfer,
    "dml": DeepMutualLearning,
    "dkd": DecoupledKD,
    "fitnet": FitNet,
    "rkd": RelationalKD,
    "pkt": ProbabilisticKT,
    "sp": SimilarityPreserving,
    "crd": ContrastiveRD,
    "reviewkd": ReviewKD,
}

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
    one-line error naming the setting, the value and the type), unknown keys refused. A number
    (or a list item) may be a schedule (``kdsearch.settings.schedules``), kept as written."""
    valid = method_settings(name)
    hints = typing.get_type_hints(method_class(name).__init__)
    out = {}
    for key, value in args.items():
        if key not in valid:
            listed = ", ".join(valid) or "none"
            raise UserError(f"method {name!r} has no setting {key!r}: its settings are {listed}")
        where = f"method {name!r}: {key}"
        if schedules.is_schedule(value):
            out[key] = schedules.check_schedule(value, where)
        elif isinstance(value, list) and schedules.has_schedule(value):
            out[key] = [
                schedules.check_schedule(v, f"{where}[{i}]") if schedules.is_schedule(v) else v for i, v in enumerate(value)
            ]
            if key in hints:  # the items that are not schedules: of the list's type
                coerce(schedules.setting_at(out[key], 0.0, 1), hints[key], where)
        else:
            out[key] = coerce(value, hints[key], where) if key in hints else value
    return out


def resolve_settings(name: str, args: Mapping[str, object]) -> dict:
    """Every setting of method ``name``: its defaults, with ``args`` (checked) over them."""
    return {**method_settings(name), **check_settings(name, args)}


def build_method(name: str, args: Mapping[str, object], *, objective: TaskLoss, make_peer: Callable[[], nn.Module]) -> Method:
    """Instantiate a method; unknown or invalid settings are a one-line UserError."""
    cls = method_class(name)
    settings = schedules.settings_at(check_settings(name, args), 0.0, 1)  # a schedule's first value; the trainer moves it
    try:
        return cls(**settings, **_context(name, objective, make_peer))
    except (TypeError, ValueError) as exc:
        raise UserError(f"method {name!r}: {exc}") from None


def check_method(name: str, args: Mapping[str, object], epochs: int = 1, multilabel: bool = False) -> None:
    """Build the method once with stand-in models, so that a bad setting is a one-line error
    before any data is loaded or any teacher trained; a scheduled setting is checked by the
    method at many points of a run of ``epochs`` epochs, and must be one its loss reads at
    each step (an attribute of the method under its own name)."""
    objective = TaskLoss(multilabel)
    settings = check_settings(name, args)
    moving = schedules.scheduled(settings)
    for progress in schedules.check_points(moving, epochs) if moving else []:
        now = schedules.settings_at(settings, progress, epochs)
        try:
            method_class(name)(**now, **_context(name, objective, nn.Identity))
        except (TypeError, ValueError) as exc:
            values = ", ".join(f"{k} {schedules.setting_at(v, progress, epochs)!r}" for k, v in moving.items())
            raise UserError(
                f"method {name!r}: its schedule leaves the valid range at {progress:.0%} of training ({values}): {exc}"
            ) from None
    method = build_method(name, args, objective=objective, make_peer=nn.Identity)
    for key in moving:
        if not hasattr(method, key):
            raise UserError(
                f"method {name!r}: {key} cannot follow a schedule (it is fixed when the method is built); give a value"
            )


def _context(name: str, objective: TaskLoss, make_peer) -> dict:
    params = inspect.signature(method_class(name)).parameters
    return {k: v for k, v in {"objective": objective, "make_peer": make_peer}.items() if k in params}


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
