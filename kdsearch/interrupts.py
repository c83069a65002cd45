"""A Ctrl-C is never lost.

Python turns SIGINT into a KeyboardInterrupt in whatever Python code runs next. When that code
is a finaliser (a ``__del__``, a weakref callback: torch, Ray and the standard library run
dozens of them per epoch), Python prints "Exception ignored" and carries on, and the run goes
on training as if nothing happened. While ``remembered()`` is active, a Ctrl-C raises as usual
and is also remembered; the training loops call ``check()`` at every step, which raises it again.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_requested = False


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came in (one Python may have swallowed)."""
    if _requested:
        raise KeyboardInterrupt


def _on_sigint(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def remembered():
    """Within: Ctrl-C raises KeyboardInterrupt and ``check()`` raises it again until the block ends.
    Only the main thread receives signals; elsewhere, within an outer block, or where SIGINT is
    ignored or handled by someone else (a notebook, an application), this does nothing."""
    global _requested
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _requested = False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested = False
