"""Logging to MLflow while a sweep runs, off Ray Tune's loop: one background thread logs the
events in the order they came, and a failure never stops training (logging goes quiet, and the
end of the sweep, or ``kdsearch sync``, catches up from the sweep folder)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

_LOG = logging.getLogger("kdsearch.tracking")


class LiveLog:
    """The events of a sweep, logged in order by one thread; ``offline`` after the first failure."""

    def __init__(self):
        self.offline = False
        self.seconds = 0.0  # spent logging to MLflow, in this process
        self.busy = threading.Lock()  # held by the thread while it logs one event
        self._queue: queue.Queue | None = None

    def safe(self, fn: Callable, *args, **kwargs):
        """``fn(*args)``, unless logging is offline; its first failure takes logging offline (no
        HTTP retries stalling Tune's loop), said once."""
        if self.offline:
            return None
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self.offline = True
            _LOG.warning("MLflow logging failed (%s); results stay in the sweep folder and are synced at the end", str(exc)[:200])
            return None
        finally:
            self.seconds += time.perf_counter() - started

    def submit(self, fn: Callable, *args) -> None:
        """Log ``fn(*args)`` in the background thread, after every event before it: Tune's loop
        (which starts trials and hands out settings) never waits for MLflow."""
        if self._queue is None:
            self._queue = queue.Queue()
            threading.Thread(target=self._drain_forever, args=(self._queue,), name="kdsearch-mlflow", daemon=True).start()
        self._queue.put((fn, args))

    def _drain_forever(self, events: queue.Queue) -> None:
        while True:
            fn, args = events.get()
            if isinstance(fn, threading.Event):
                fn.set()  # drain()'s marker: everything before it is done (also when offline)
            else:
                with self.busy:
                    self.safe(fn, *args)

    def drain(self, timeout: float = 120.0) -> bool:
        """Wait until every event so far is logged (at most ``timeout`` s: then logging goes
        offline and the end of the sweep, or `kdsearch sync`, catches up). True when drained."""
        if self._queue is None:
            return True
        done = threading.Event()
        self._queue.put((done, ()))
        if done.wait(timeout):
            return True
        self.offline = True
        _LOG.warning(
            "MLflow logging did not keep up (%.0f s); results stay in the sweep folder and are synced at the end", timeout
        )
        return False
