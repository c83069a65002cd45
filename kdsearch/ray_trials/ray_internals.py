"""The one place kdsearch touches a private name of Ray (tests/test_layout.py enforces it).

Between events, Tune's loop (Ray 2.60's ``TuneController.step``) wakes every 0.1 s: it asks
the searcher, checks resources and the experiment state's paths while every trial trains. On a
machine whose cores the trials fill, each wake-up preempts a trial
(benchmarks/results/speed-cpu.md). Ray offers no setting for that wait, so ``calm_tune_loop``
raises it to ``IDLE_WAIT_S`` through Tune's actor manager, only on the Ray version it was
written and tested for; on any other version Tune's own loop runs unchanged, with one log line.
Every event (a result, an actor up, a failure) still ends the wait at once; a graceful stop
(Ctrl-C, a full disk) is seen within it.

``ResultLog``: Tune's JSON result log, except that a trial's history holds each epoch once, from
the run that made its checkpoints (a trial restarted from a checkpoint trains again the epochs
its abandoned run had logged past it), and a trial restarted by this driver (its worker or node
died) keeps the lines it has: Ray 2.60 copies the trial's result.json back from storage whenever
a trial starts from a checkpoint, and that copy is only as new as Tune's last save of its state,
so the epochs logged since would be lost. The copy from storage is still made where this driver
has none (a resumed sweep), and on any other Ray version (``_restore_from_remote`` is private).

``LightFinishedTrials``: for every numeric metric of every trial, Tune keeps two running-average
windows (deques, ~1.3 KB a metric) in the driver for the sweep's life, and writes them into
every save of its state; a finished trial never updates them again. They are dropped when a
trial finishes (its min, max, average and last values stay, for ExperimentAnalysis), on the
tested Ray version only (benchmarks/results/many-trials.md: the driver's memory per trial).

``without_result_frames``: when ``tuner.fit()`` ends (and when a Tuner is restored), Tune's
ExperimentAnalysis reads every trial's result.json into a pandas DataFrame, 34 KB a trial even
for one epoch (67 MB at 2,000 trials, on top of the driver's peak). kdsearch reads the files
itself (``runner.trial_history``), so within this context Tune reads none, on the tested Ray.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from pathlib import Path

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from kdsearch.ray_trials.trainable import REPLAYED
from kdsearch.search.record import epoch_of

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


class ResultLog(JsonLoggerCallback):
    """Each trial's result.json, one line per result, each epoch once, from the run that made the
    trial's checkpoints: when a restarted trial reports an epoch the file already has, the lines
    from that epoch on (the abandoned run's, past its last checkpoint) are dropped first. On the
    tested Ray, a trial restarted by this driver keeps the lines it has (Ray would copy an older
    result.json back from storage); a result a trial restored from its end checkpoint reports again
    (REPLAYED) is not written twice. Both use Ray's private names, so only on the tested Ray."""

    def __init__(self, version: str | None = None):
        super().__init__()
        version = version or ray.__version__
        restore = getattr(JsonLoggerCallback, "_restore_from_remote", None)
        self.on_tested_ray = version.startswith(TESTED_RAY) and callable(restore)  # the private names below hold
        if not self.on_tested_ray:
            _LOG.info("kdsearch: on Ray %s a restarted trial's result.json restarts from Ray's copy in storage", version)
        self._last_epoch: dict = {}  # trial -> the last epoch in its result.json, read once a trial

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if result.get(REPLAYED):
            return
        epoch = epoch_of(result)
        if trial not in self._last_epoch:
            self._last_epoch[trial] = _last_epoch(Path(trial.local_path, "result.json"))
        last = self._last_epoch[trial]
        if epoch is not None and last is not None and epoch <= last and self.on_tested_ray:
            self._drop_from(trial, epoch)  # elsewhere the reader keeps each epoch once (search.record.parse_history)
        super().log_trial_result(iteration, trial, result)
        self._last_epoch[trial] = epoch

    def log_trial_end(self, trial, failed: bool = False) -> None:
        super().log_trial_end(trial, failed)
        self._last_epoch.pop(trial, None)

    def _drop_from(self, trial, epoch) -> None:
        """result.json without its lines of ``epoch`` and later (rewritten atomically)."""
        path = Path(trial.local_path, "result.json")
        handle = self._trial_files.pop(trial, None)
        if handle is not None:
            handle.close()
        kept = [line for line in _lines(path) if _epoch_of(line) is not None and _epoch_of(line) < epoch]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
        self._trial_files[trial] = path.open("at")

    def _restore_from_remote(self, file_name: str, trial) -> None:
        if self.on_tested_ray and Path(trial.local_path, file_name).is_file():
            return  # this driver wrote it: it holds every line storage has, and the newest
        super()._restore_from_remote(file_name, trial)
        self._last_epoch.pop(trial, None)  # read again from the copy at its next result


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]
    except FileNotFoundError:
        return []


def _epoch_of(line: str):
    try:
        return epoch_of(json.loads(line))
    except ValueError:
        return None


def _last_epoch(path: Path):
    epochs = [e for e in map(_epoch_of, _lines(path)) if e is not None]
    return max(epochs) if epochs else None


class LightFinishedTrials(tune.Callback):
    """Drops a finished trial's running-average windows (never updated again) from the driver."""

    def __init__(self, version: str | None = None):
        self.enabled = (version or ray.__version__).startswith(TESTED_RAY)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        meta = getattr(trial, "run_metadata", None)
        windows = getattr(meta, "metric_n_steps", None)
        if not self.enabled or not isinstance(windows, dict):
            return
        windows.clear()
        meta.invalidate_cache()  # its state in Tune's next save is rebuilt without them


@contextlib.contextmanager
def without_result_frames(version: str | None = None):
    """Within: Tune's ExperimentAnalysis builds no DataFrame of each trial's results (the tested
    Ray only; elsewhere it does, unchanged). Yields whether it was changed."""
    analysis = None
    if (version or ray.__version__).startswith(TESTED_RAY):
        from ray.tune.analysis import experiment_analysis  # only where this workaround applies

        analysis = getattr(experiment_analysis, "ExperimentAnalysis", None)
    original = getattr(analysis, "_fetch_trial_dataframes", None)
    if original is None:
        yield False
        return
    analysis._fetch_trial_dataframes = lambda self: {}
    try:
        yield True
    finally:
        analysis._fetch_trial_dataframes = original
