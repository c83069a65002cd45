"""Method settings that move during training: a schedule instead of a constant.

A schedule is a mapping with a ``schedule`` key naming its shape, evaluated from the share of
training done (0 at the first optimiser step, 1 at the last), so the curve is the same at any
batch size and in a resumed run:

    {schedule: constant, value: 4}
    {schedule: linear, start: 0.9, end: 0.1}          # straight from start to end
    {schedule: cosine, start: 8, end: 1}              # half a cosine from start to end
    {schedule: exponential, start: 8, end: 1}         # geometric: start * (end/start)^progress (both > 0)
    {schedule: step, values: [0, 1], at: [0.3]}       # 0 until 30% of training, then 1
    {schedule: warmup, epochs: 5, value: 1000}        # 0 to value over the first 5 epochs, then held

Any numeric method setting (temperature, alpha, AT's beta and per-stage weights, DML's weight,
DKD's alpha and beta) takes one in YAML, ``--set`` and the Python API. Whether its values stay
in the setting's valid range is checked by the method itself, at many points of training,
before anything trains (``kdsearch.methods.check_method``).
"""

from __future__ import annotations

import math
from typing import Any

from kdsearch.errors import UserError

SHAPES = {
    "constant": ("value",),
    "linear": ("start", "end"),
    "cosine": ("start", "end"),
    "exponential": ("start", "end"),
    "step": ("values", "at"),
    "warmup": ("value", "epochs"),
}


def is_schedule(value: Any) -> bool:
    return isinstance(value, dict) and "schedule" in value


def has_schedule(value: Any) -> bool:
    """A schedule, or a list holding one (AT's per-stage weights)."""
    return is_schedule(value) or (isinstance(value, list) and any(is_schedule(v) for v in value))


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{where} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise UserError(f"{where} must be a finite number, got {value!r}")
    return number


def check_schedule(spec: Any, where: str) -> dict:
    """A schedule as written, checked (shape, its keys, numbers); returns it with numbers as floats."""
    if not is_schedule(spec):
        raise UserError(f"{where}: a schedule is a mapping like {{schedule: linear, start: 0.9, end: 0.1}}, got {spec!r}")
    shape = spec["schedule"]
    if shape not in SHAPES:
        raise UserError(f"{where}: unknown schedule {shape!r}; choose one of {', '.join(SHAPES)}")
    keys = set(spec) - {"schedule"}
    if keys != set(SHAPES[shape]):
        wanted = ", ".join(SHAPES[shape])
        raise UserError(f"{where}: a {shape} schedule takes {wanted}, got {', '.join(sorted(keys)) or 'nothing'}")
    out: dict[str, Any] = {"schedule": shape}
    if shape == "step":
        values, at = spec["values"], spec["at"]
        if not isinstance(values, list) or not isinstance(at, list) or len(values) != len(at) + 1:
            raise UserError(f"{where}: a step schedule takes values: [v0, v1, ...] and at: [f1, ...], one value more than at")
        out["values"] = [_number(v, f"{where}.values[{i}]") for i, v in enumerate(values)]
        out["at"] = [_number(a, f"{where}.at[{i}]") for i, a in enumerate(at)]
        if any(not 0 < a < 1 for a in out["at"]) or out["at"] != sorted(out["at"]):
            raise UserError(f"{where}: a step schedule's at are rising shares of training in (0, 1), got {at!r}")
        return out
    for key in SHAPES[shape]:
        out[key] = _number(spec[key], f"{where}.{key}")
    if shape == "exponential" and not (out["start"] > 0 and out["end"] > 0):
        raise UserError(f"{where}: an exponential schedule needs start and end > 0, got {out['start']} and {out['end']}")
    if shape == "warmup":
        if not out["epochs"] > 0:
            raise UserError(f"{where}: warmup epochs must be > 0, got {out['epochs']}")
    return out


def value_at(spec: dict, progress: float, epochs: int) -> float:
    """The schedule's value after ``progress`` (0 to 1) of a run of ``epochs`` epochs."""
    p = min(max(progress, 0.0), 1.0)
    shape = spec["schedule"]
    if shape == "constant":
        return spec["value"]
    if shape == "linear":
        return spec["start"] + (spec["end"] - spec["start"]) * p
    if shape == "cosine":
        return spec["end"] + (spec["start"] - spec["end"]) * 0.5 * (1 + math.cos(math.pi * p))
    if shape == "exponential":
        return spec["start"] * (spec["end"] / spec["start"]) ** p
    if shape == "step":
        return spec["values"][sum(1 for a in spec["at"] if p >= a)]
    ramp = min(spec["epochs"] / epochs, 1.0)  # warmup: the share of training its epochs take
    return spec["value"] * (min(p / ramp, 1.0) if ramp > 0 else 1.0)


def setting_at(value: Any, progress: float, epochs: int) -> Any:
    """A setting's value at a point of training: a schedule evaluated, a list item by item."""
    if is_schedule(value):
        return value_at(value, progress, epochs)
    if isinstance(value, list):
        return [setting_at(v, progress, epochs) for v in value]
    return value


def settings_at(settings: dict, progress: float, epochs: int) -> dict:
    return {k: setting_at(v, progress, epochs) for k, v in settings.items()}


def scheduled(settings: dict) -> dict:
    """The settings that follow a schedule (whole lists for a list with one)."""
    return {k: v for k, v in settings.items() if has_schedule(v)}


def check_points(settings: dict, epochs: int, steps: int = 200) -> list[float]:
    """Where to check a schedule's values against the setting's range: evenly over training,
    the ends, and both sides of every step and warmup's end."""
    points = {i / steps for i in range(steps + 1)}
    for value in settings.values():
        for spec in value if isinstance(value, list) else [value]:
            if is_schedule(spec):
                edges = spec.get("at", []) + ([min(spec["epochs"] / epochs, 1.0)] if spec["schedule"] == "warmup" else [])
                for edge in edges:
                    points.update({max(edge - 1e-9, 0.0), edge})
    return sorted(points)


def progress(step: int, total_steps: int) -> float:
    """The share of training done at optimiser step ``step`` (counted from 0) of ``total_steps``:
    0 at the first step, 1 at the last."""
    return step / max(total_steps - 1, 1)


def as_metrics(now: dict) -> dict[str, float]:
    """``schedule/<name>`` (``schedule/<name>.<i>`` for a list) for scheduled settings' values as
    evaluated (``settings_at(scheduled(...), ...)``): what the loss used, logged every epoch."""
    out = {}
    for name, value in now.items():
        if isinstance(value, list):
            out.update({f"schedule/{name}.{i}": float(v) for i, v in enumerate(value)})
        else:
            out[f"schedule/{name}"] = float(value)
    return out
