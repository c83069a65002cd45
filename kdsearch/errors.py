"""The one error type a user should ever see from kdsearch.

Anything the user can fix (a bad path, an unknown name, a malformed config) raises
``UserError`` with a one-line message that says what is wrong and how to fix it; the
command line prints that line and exits with status 2, never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

V = TypeVar("V")


class UserError(Exception):
    """A problem the user can fix; its message is one line naming the fix."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line (its type's name when it has no text), at most ``limit``
    characters: what a one-line message quotes of a library's error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def lookup(registry: Mapping[str, V], name: str, what: str) -> V:
    """``registry[name]``, or a UserError listing the valid names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(registry))
        raise UserError(f"unknown {what} {name!r}: choose one of {valid}") from None
