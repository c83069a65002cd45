"""Stopping a sweep's trials gracefully: on Ctrl-C, or when a check says so (a full disk).

Ray Tune stops gracefully on SIGUSR1 (its experiment state saved, unfinished trials resumable);
kdsearch takes Ctrl-C itself (``TUNE_DISABLE_SIGINT_HANDLER``) and hands it to Tune that way,
so it knows a stop was asked for. No Ray import here: the signal is the interface.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable


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


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """Set environment variables for a block and restore what was there after (a second sweep in
    one Python process must not inherit the first one's)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
