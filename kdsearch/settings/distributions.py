"""A search space's values, with distributions anywhere inside them.

A setting in ``space`` is a template: a distribution (``{uniform: [0, 1]}``), or a list or a
mapping holding some (``weights: [{uniform: [0, 2]}, 1.0]``, a schedule whose ``start`` is
searched). Each distribution becomes one flat parameter of the searcher, named by its path
(``weights.0``, ``alpha.start``, ``kd.temperature``); ``fill`` puts a trial's drawn values back.
A parameter may carry ``when: {param, in}``: drawn only when another parameter was drawn with
one of those values (a method's settings, when the method is searched). No torch, no Ray here.
"""

from __future__ import annotations

from typing import Any

from kdsearch.errors import UserError

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
PARAM = "$param"  # a template's placeholder: {"$param": "alpha.start"}
MISSING = object()  # a template with a placeholder the trial did not draw


def is_distribution(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def check_distribution(spec: Any, where: str) -> dict:
    """A ``{kind: args}`` mapping as a checked distribution."""
    if not is_distribution(spec):
        raise UserError(f"{where}: a distribution is one of {', '.join(f'{{{d}: [...]}}' for d in DISTRIBUTIONS)}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise UserError(f"{where}: {kind} needs a list, e.g. {{{kind}: [1, 10]}}")
    if kind == "choice":
        return {"kind": kind, "args": list(args)}
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise UserError(f"{where}: {kind} needs two numbers [low, high], got {args!r}")
    low, high = args
    if not low < high:
        raise UserError(f"{where}: {kind} bounds must be [low, high] with low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{where}: loguniform bounds must be > 0, got [{low}, {high}]; use uniform for ranges that include 0")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise UserError(f"{where}: int bounds must be integers, got [{low}, {high}]")
    return {"kind": kind, "args": [int(low), int(high)] if kind == "int" else [float(low), float(high)]}


def make_template(value: Any, name: str, where: str, space: dict, when: dict | None = None) -> Any:
    """``value`` with each distribution inside it replaced by a placeholder; the distributions
    go into ``space`` under their path names (with ``when``, if given)."""
    if is_distribution(value) or (isinstance(value, dict) and len(value) == 1 and next(iter(value)) not in ("schedule",)):
        dist = check_distribution(value, where)
        space[name] = {**dist, "when": when} if when else dist
        return {PARAM: name}
    if isinstance(value, dict):
        return {k: make_template(v, f"{name}.{k}", f"{where}.{k}", space, when) for k, v in value.items()}
    if isinstance(value, list):
        return [make_template(v, f"{name}.{i}", f"{where}[{i}]", space, when) for i, v in enumerate(value)]
    return value


def params_of(template: Any) -> list[str]:
    if isinstance(template, dict):
        if PARAM in template:
            return [template[PARAM]]
        return [p for v in template.values() for p in params_of(v)]
    if isinstance(template, list):
        return [p for v in template for p in params_of(v)]
    return []


def fill(template: Any, drawn: dict) -> Any:
    """The template with a trial's drawn values put in; ``MISSING`` if it lacks one of them."""
    if isinstance(template, dict):
        if PARAM in template:
            return drawn.get(template[PARAM], MISSING)
        out = {k: fill(v, drawn) for k, v in template.items()}
        return MISSING if any(v is MISSING for v in out.values()) else out
    if isinstance(template, list):
        out = [fill(v, drawn) for v in template]
        return MISSING if any(v is MISSING for v in out) else out
    return template


def active(dist: dict, drawn: dict) -> bool:
    """Whether a space entry is drawn, given the settings drawn before it."""
    when = dist.get("when")
    return when is None or (when["param"] in drawn and drawn[when["param"]] in when["in"])


def grid(space: dict) -> list[dict]:
    """Every combination of the choice lists, each once, in order; an entry whose condition does
    not hold adds no combinations (a method's grid is crossed only with that method)."""
    combos: list[dict] = [{}]
    for name, dist in space.items():
        grown = []
        for combo in combos:
            if active(dist, combo):
                grown += [{**combo, name: value} for value in dist["args"]]
            else:
                grown.append(combo)
        combos = grown
    return combos
