"""The one place kdsearch touches a private name of Ray (tests/test_layout.py enforces it).

Between events, Tune's loop (Ray 2.60's ``TuneController.step``) wakes every 0.1 s: it asks
the searcher, checks resources and the experiment state's paths while every trial trains. On a
machine whose cores the trials fill, each wake-up preempts a trial
(benchmarks/results/speed-cpu.md). Ray offers no setting for that wait, so ``calm_tune_loop``
raises it to ``IDLE_WAIT_S`` through Tune's actor manager, only on the Ray version it was
written and tested for; on any other version Tune's own loop runs unchanged, with one log line.
Every event (a result, an actor up, a failure) still ends the wait at once; a graceful stop
(Ctrl-C, a full disk) is seen within it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging

import ray

TESTED_RAY = "2.60."  # the Ray minor version whose actor manager this was written against
IDLE_WAIT_S = 1.0
_ACTOR_MANAGER = "ray.air.execution._internal.actor_manager"
_LOG = logging.getLogger("kdsearch")


def _actor_manager(version: str):
    """Tune's actor manager class on the tested Ray version, else None (and why, logged once)."""
    if not version.startswith(TESTED_RAY):
        _LOG.info("kdsearch: Ray %s is not %sx: Tune's loop keeps its own 0.1 s idle wait", version, TESTED_RAY)
        return None
    try:
        manager = importlib.import_module(_ACTOR_MANAGER).RayActorManager
    except (ImportError, AttributeError):
        _LOG.info("kdsearch: Ray %s has no %s.RayActorManager: Tune's loop keeps its own idle wait", version, _ACTOR_MANAGER)
        return None
    if not callable(getattr(manager, "next", None)):
        return None
    return manager


@contextlib.contextmanager
def calm_tune_loop(version: str | None = None):
    """Within: Tune's idle wait is at least ``IDLE_WAIT_S``; restored after, whatever happens."""
    manager = _actor_manager(version or ray.__version__)
    if manager is None:
        yield False
        return
    original = manager.next

    def next_event(self, timeout=None):
        return original(self, timeout if timeout is None else max(timeout, IDLE_WAIT_S))

    manager.next = next_event
    try:
        yield True
    finally:
        manager.next = original
