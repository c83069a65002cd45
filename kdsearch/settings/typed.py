"""Reading values as people write them: YAML files and command-line values (``1e-3`` is a
number), checked against a setting's declared type with a one-line error. No torch here."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml

from kdsearch.errors import UserError, first_line


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a value against a field's type, accepting '1e-3' and 3 for a float."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise UserError(f"{where} must not be empty")
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if typing.get_origin(base) is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(base) or (Any,)
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if base is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where} must be an integer, got {value!r}")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where} must be a number, got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where} must be a string, got {value!r}")
    return value


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; read it as the number people mean."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing or malformed file is a one-line UserError."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): save it as UTF-8 YAML"
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None


def parse_value(text: str) -> Any:
    """A command-line value (``--set temperature=4``) read as YAML: numbers, lists, booleans."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text
