"""Ctrl-C, in one place: it is never lost, and in a sweep it stops the trials gracefully.

**In a training loop** (``remembered``, ``check``): Python turns SIGINT into a KeyboardInterrupt
in whatever Python code runs next. When that code is a finaliser (a ``__del__``, a weakref
callback: torch, Ray and the standard library run dozens of them per epoch), Python prints
"Exception ignored" and carries on, and the run goes on training as if nothing happened. While
``remembered()`` is active, a Ctrl-C raises as usual and is also remembered; the training loops
call ``check()`` at every step, which raises it again.

**In a sweep** (``graceful_ctrl_c``, ``stop_when``): Ray Tune stops gracefully on SIGUSR1 (its
experiment state saved, unfinished trials resumable); kdsearch takes Ctrl-C itself
(``TUNE_DISABLE_SIGINT_HANDLER``) and hands it to Tune that way, so it knows a stop was asked
for. A check that says so (a full disk) stops the trials the same way. No Ray import here: the
signal is the interface.

**What the user reads** (``Interrupted``): the message of a stopped run, what was kept and how to
go on; the command line prints it and exits with status 130, as a shell does for SIGINT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable

_requested = False


class Interrupted(Exception):
    """The user stopped the run (Ctrl-C); the message says what was kept and how to go on."""


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


class TrialsInterrupted(Exception):
    """Ctrl-C during the trials: Tune stopped them and saved its state; ``records`` as far as they got."""

    def __init__(self, records: list):
        super().__init__(f"interrupted with {len(records)} trials started")
        self.records = records


class TrialsStopped(Exception):
    """The caller's ``stop_check`` stopped the trials (say, the storage filled up); state saved."""

    def __init__(self, reason: str, records: list):
        super().__init__(reason)
        self.reason, self.records = reason, records


def stop_tune() -> None:
    os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own graceful stop: experiment state saved, trials resumable


@contextlib.contextmanager
def stop_when(check: Callable[[], str | None] | None):
    """A thread that asks ``check`` every second and stops Tune gracefully on the first reason;
    yields the list the reason is put in."""
    reasons: list[str] = []
    done = threading.Event()

    def watch():
        while not done.wait(1.0):
            reason = check()
            if reason:
                reasons.append(reason)
                stop_tune()
                return

    watcher = threading.Thread(target=watch, name="kdsearch-stop-check", daemon=True)
    if check is not None:
        watcher.start()
    try:
        yield reasons
    finally:
        done.set()
        if check is not None:
            watcher.join()


@contextlib.contextmanager
def graceful_ctrl_c():
    """The first Ctrl-C stops the trials the way Tune stops on its own signal: the experiment
    state is saved and unfinished trials resume later. A second one stops at once. Yields an
    Event that is set once a Ctrl-C came."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_sigint(signum, frame):
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        print("kdsearch: stopping the trials and saving their state (Ctrl-C again stops at once)", file=sys.stderr, flush=True)
        stop_tune()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
