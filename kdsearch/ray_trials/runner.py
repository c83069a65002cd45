"""Running a sweep's trials with Ray Tune: the Tuner, its searcher, scheduler, progress lines
and callbacks, and the trials as kdsearch records (no Ray types) when they end."""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from tabulate import tabulate

from kdsearch.data import DatasetSplits, placement
from kdsearch.errors import UserError
from kdsearch.models.checkpoint import trial_student
from kdsearch.ray_trials import cluster, ray_internals
from kdsearch.ray_trials.searcher import StudySearcher, searcher_for
from kdsearch.ray_trials.trainable import REPLAYED, SCORE, EpochTrainable, architecture_metrics, payload, teacher_payload
from kdsearch.runtime.interrupts import TrialsInterrupted, TrialsStopped, graceful_ctrl_c, stop_when
from kdsearch.search.options import SweepOptions
from kdsearch.search.record import FIXED_KEY, TrialRecord, parse_history, searched, sign
from kdsearch.search.space import SweepSpec
from kdsearch.teacher.weights import Teacher

_LOG = logging.getLogger("kdsearch")


def make_searcher(
    spec: SweepSpec, study_name: str = "sweep", study_db: Path | None = None, max_epochs: int | None = None
) -> StudySearcher:
    """The sweep's searcher; ``study_db``: the SQLite file its study is written to when the trials end."""
    s = spec.search
    return StudySearcher(
        spec.space,
        list(s.objectives),
        sampler=s.sampler,
        seed=s.seed,
        startup_trials=s.startup_trials(),
        population_size=max(2, min(50, s.num_samples // 2)),
        max_epochs=max_epochs,
        study_name=study_name,
        study_db=study_db,
    )


def scheduler(spec: SweepSpec, max_epochs: int):
    s = spec.search
    if s.scheduler == "fifo":
        return FIFOScheduler()
    # Several objectives: ASHA stops on the first one (accuracy, usually); the rest are
    # fixed by the architecture and do not change with training.
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=s.metric,
        mode=s.mode,
        max_t=max_epochs,
        grace_period=s.first_rung(max_epochs),
        reduction_factor=s.reduction_factor,
    )


class SweepProgress(tune.ProgressReporter):
    """A compact status table of the trials, best score first, at most every ``every_s`` seconds,
    on stderr (stdout keeps the final summary)."""

    def __init__(self, spec: SweepSpec, every_s: float = 20.0, rows: int = 12):
        self.metric, self.mode = spec.search.metric, spec.search.mode
        self.params = list(spec.space)[:6]
        self.every_s, self.rows, self.last = every_s, rows, 0.0

    def should_report(self, trials, done: bool = False) -> bool:
        return done or time.monotonic() - self.last >= self.every_s

    def report(self, trials, done: bool, *sys_info: str) -> None:
        self.last = time.monotonic()
        print(self.table(trials, sys_info), file=sys.stderr, flush=True)

    def table(self, trials, sys_info=()) -> str:
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        up = sign(self.mode)

        def key(trial):  # as search.record.ranked orders trials, by the score each reported last
            score = (trial.last_result or {}).get(SCORE)
            return (score is None, -up * score if score is not None else 0.0, trial.trial_id)

        rows = []
        for trial in sorted(trials, key=key)[: self.rows]:
            result = trial.last_result or {}
            rows.append(
                [trial.trial_id, trial.status]
                + [_short(trial.config.get(p)) for p in self.params]
                + [result.get("epoch"), _short(result.get(self.metric)), _short(result.get(SCORE))]
            )
        header = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        lines = [f"== {len(trials)} trials: {header} =="] + [line for line in sys_info if line]
        lines.append(tabulate(rows, headers=["trial", "status", *self.params, "epochs", self.metric, "score"]))
        if len(trials) > self.rows:
            lines.append(f"... and {len(trials) - self.rows} more")
        return "\n".join(lines)


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value


class TeacherFallbacks(tune.Callback):
    """Says, once per reason, that trials run the teacher live although the sweep shares its
    outputs (a searched setting the shared outputs were not computed for: epochs, seed, views)."""

    def __init__(self, log: Callable[[str], None] | None):
        self.log, self.seen = log, set()

    def __getstate__(self) -> dict:  # saved with the sweep's Tuner: a resumed sweep logs to kdsearch's logger
        return {"log": None, "seen": set()}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        why = result.get("trial/teacher_live")
        if why and why not in self.seen:
            self.seen.add(why)
            (self.log or _LOG.info)(
                f"trial {trial.trial_id} runs its teacher live every step, not from the shared outputs: {why} (said once per reason)"
            )


class ForwardResults(tune.Callback):
    """Hands trial events to a tracker (kdsearch.tracking.runs) without exposing Ray types."""

    def __init__(self, tracker):
        self.tracker = tracker

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.trial_started(trial.trial_id, searched(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get(REPLAYED):  # a trial restored at its end: logged the first time
            self.tracker.trial_result(trial.trial_id, searched(trial.config), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.trial_finished(trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.trial_finished(trial.trial_id, "FAILED", error=str(getattr(trial, "error_msg", "") or "")[:500])


def run_trials(
    spec: SweepSpec,
    data: DatasetSplits,
    teacher: Teacher | None,
    opts: SweepOptions,
    *,
    storage: str,
    name: str,
    tracker=None,
    teacher_outputs=None,
    stop_check: Callable[[], str | None] | None = None,
    study_db: Path | None = None,
    placement: str | None = None,
    log: Callable[[str], None] | None = None,
    ship_code: list[str] | None = None,
) -> list[TrialRecord]:
    """Run (or resume, ``opts.resume``) the sweep in ``storage/name`` with ``opts``' resources and
    return every trial. ``ship_code``: the user's modules, sent with the trials (``pack_code``)
    when the Ray they run on was started without them. ``stop_check`` is asked every second
    while the trials run; a reason it returns stops them gracefully (state saved, resumable) and raises ``TrialsStopped``.
    ``study_db``: where the Optuna study is written when the trials end (also after Ctrl-C and
    on a resume). ``placement``: where the data lives (``place_data``); None: each trial chooses.
    ``log``: told, once per reason, when trials run the teacher live beside ``teacher_outputs``."""
    gpus_per_trial = cluster.gpus_per_trial_default(opts.gpus_per_trial)
    cluster.check_resources(opts.cpus_per_trial, gpus_per_trial)
    cluster.check_storage(storage, opts.shared_storage)
    trainable = _trainable(
        spec,
        data,
        teacher,
        teacher_outputs,
        cpus_per_trial=opts.cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        placement=placement,
        code=cluster.pack_code(ship_code) if ship_code else None,
    )
    with cluster.environment(_tune_settings(opts, gpus_per_trial)), ray_internals.without_result_frames():
        tuner, searcher = _tuner(spec, trainable, storage, name, study_db, opts, tracker=tracker, log=log)
        # The driver's objects so far (Ray, torch, MLflow, the data) live as long as the sweep: kept
        # out of the garbage collector while Tune's loop runs, its automatic full collections, each
        # ~100 ms among them, stay short.
        gc.freeze()
        try:
            with graceful_ctrl_c() as interrupted, stop_when(stop_check) as stopped, ray_internals.calm_tune_loop():
                grid = tuner.fit()
        finally:
            gc.unfreeze()  # a Python API user's next sweep: this one's objects may go
            _write_study(searcher, study_db, tracker)
    records = [_record(result, spec, storage) for result in grid]
    if interrupted.is_set():
        raise TrialsInterrupted(records)
    if stopped:
        raise TrialsStopped(stopped[0], records)
    return records


def _tune_settings(opts: SweepOptions, gpus_per_trial: float) -> dict[str, str]:
    """Tune's environment settings for a sweep."""
    return {
        # Each trial's params.json and result.json are all kdsearch reads (and what Tune restores
        # from); Tune's CSV and TensorBoard copies of every result cost time per trial and epoch.
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
        # How many trials Tune may be starting at once: under a searcher it starts one at a time,
        # each waiting for the last one's actor to come up. As many as the cluster runs now; not
        # a cap on how many run. A value the user set wins.
        "TUNE_MAX_PENDING_TRIALS_PG": os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")
        or str(cluster.trials_at_once(opts.cpus_per_trial, gpus_per_trial)),
    }


def trial_dirname(trial) -> str:
    """A trial's folder: ``trial_<id>`` (a module function: Tune keeps it in every trial's saved
    state, where a lambda is pickled whole, 1.3 KB a trial)."""
    return f"trial_{trial.trial_id}"


def _tuner(spec: SweepSpec, trainable, storage: str, name: str, study_db, opts: SweepOptions, *, tracker, log=None):
    """A new sweep's Tuner with its searcher, or the Tuner Tune restores (its searcher inside)."""
    path = os.path.join(storage, name)
    if opts.resume:
        if not tune.Tuner.can_restore(path):
            raise UserError(f"nothing to resume at {path}: run the sweep without --resume first (same --name and --storage)")
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True), None
    epochs = spec.example_config().epochs
    searcher = make_searcher(spec, name, study_db, max_epochs=epochs)
    tuner = tune.Tuner(
        trainable,
        param_space={FIXED_KEY: spec.fixed_settings()},  # constants: every trial's config shows them to Ray's tools
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler(spec, epochs),
            num_samples=spec.search.num_samples,
            max_concurrent_trials=opts.max_concurrent or spec.search.max_concurrent,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=_run_config(spec, name, storage, tracker, opts.verbose, log),
    )
    return tuner, searcher


def place_data(spec: SweepSpec, data: DatasetSplits, opts: SweepOptions, log: Callable[[str], None]):
    """Where the sweep's training data lives (data.placement), chosen in the driver before
    anything trains for as many trials as run at once, and said in one line; a sweep whose data
    fits nowhere stops here in one line. Returns (placement, the data as it lives there)."""
    gpus = cluster.gpus_per_trial_default(opts.gpus_per_trial)
    device = torch.device("cuda") if gpus and torch.cuda.is_available() else torch.device("cpu")
    trials = sweep_trials_at_once(spec, opts)
    fixed = spec.fixed_config()
    decided, data = placement.place(fixed, data, device, log, trials=trials, share=min(1.0, gpus) if gpus else 1.0)
    if decided == "stream":
        cluster.check_shared_folder(placement.cache_folder(fixed), opts.shared_storage, "the streamed data's files")
    return decided, data


def sweep_trials_at_once(spec: SweepSpec, opts: SweepOptions) -> int:
    """How many of the sweep's trials run at once: what the cluster holds, capped by the sweep."""
    gpus = cluster.gpus_per_trial_default(opts.gpus_per_trial)
    caps = (cluster.trials_at_once(opts.cpus_per_trial, gpus), opts.max_concurrent or spec.search.max_concurrent)
    return min([spec.search.num_samples, *(c for c in caps if c)])


def _trainable(
    spec: SweepSpec,
    data,
    teacher,
    teacher_outputs,
    *,
    cpus_per_trial: float,
    gpus_per_trial: float,
    placement: str | None,
    code: bytes | None = None,
):
    """EpochTrainable with what every trial shares (through Ray's object store) and its resources;
    with ``code`` (``pack_code``), a trial makes it importable before anything else."""
    trainable = tune.with_parameters(
        _with_code(code),
        spec=spec,
        data_payload=payload(data),
        teacher_payload=teacher_payload(teacher) if teacher is not None else None,
        threads=max(1, math.ceil(cpus_per_trial)),
        teacher_outputs=teacher_outputs,
        static_by_architecture=architecture_metrics(spec, data),
        gpu_share=gpus_per_trial,
        placement=placement,
    )
    return tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})


def _with_code(code: bytes | None) -> type[EpochTrainable]:
    if code is None:
        return EpochTrainable

    class EpochTrainableWithCode(EpochTrainable):  # defined here: Ray sends it, archive and all, by value
        def __init__(self, *args, **kwargs):
            cluster.use_code(code)  # before with_parameters' setup unpickles what may be the user's
            super().__init__(*args, **kwargs)

    return EpochTrainableWithCode


def _run_config(spec: SweepSpec, name: str, storage: str, tracker, verbose: int, log=None) -> tune.RunConfig:
    callbacks: list = [ray_internals.ResultLog(), ray_internals.LightFinishedTrials(), TeacherFallbacks(log)]
    if tracker is not None:
        callbacks.append(ForwardResults(tracker))
    return tune.RunConfig(
        name=name,
        storage_path=storage,
        callbacks=callbacks,
        verbose=verbose,
        progress_reporter=SweepProgress(spec) if verbose else None,
        # A trial checkpoints at ASHA's rungs (and every checkpoint_every epochs) as it asks, and at
        # its end; each checkpoint's student is its best epoch's so far. All are kept (a couple a
        # trial): with num_to_keep set, Tune saves its whole experiment state at every trial
        # checkpoint, a cost that grows with the sweep (benchmarks/results/many-trials.md).
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=0, checkpoint_at_end=True),
        failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
    )


def _write_study(searcher: StudySearcher | None, study_db: Path | None, tracker) -> None:
    """The study to its file: the searcher built here, or on a resume the one Tune restored from
    the experiment (which registered itself). A resumed sweep whose searcher cannot be found
    says so, never silently leaves the file out."""
    if study_db is None:
        return
    searcher = searcher or searcher_for(study_db)
    if searcher is None:
        print(f"warning: the sweep's Optuna study was not found in Ray Tune's state: {study_db} not written", file=sys.stderr)
        return
    searcher.write_study(tracker.run_ids() if tracker is not None else None)


def can_resume(path: str) -> bool:
    """Whether Tune saved enough of the sweep at ``path`` to continue it."""
    return tune.Tuner.can_restore(path)


def trial_history(result) -> list[dict]:
    """A trial's results, one dict an epoch, read from its result.json in the sweep's storage
    (a line cut short by a kill ends it; each line's copy of the trial's config is left out)."""
    try:
        with result.filesystem.open_input_stream(f"{result.path}/result.json") as f:
            return parse_history(f.readall().decode("utf-8"))
    except (FileNotFoundError, OSError):
        return []


def _record(result, spec: SweepSpec, storage: str) -> TrialRecord:
    history = trial_history(result)
    best = None
    checkpoint = result.checkpoint  # the latest: it holds the trial's best student so far
    if checkpoint is not None:
        best = checkpoint.path
        if "://" in storage and "://" not in best:  # pyarrow gives object-store paths without their scheme
            best = f"{storage.split('://', 1)[0]}://{best.lstrip('/')}"
    trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.removeprefix("trial_")
    error = str(result.error) if result.error else None
    return TrialRecord.read(trial_id, result.config or {}, history, error=error, path=result.path, best_checkpoint=best)


def copy_student(checkpoint_path: str, dest: Path) -> Path:
    """Copy a trial checkpoint's student file, local or in remote storage, to ``dest`` (written
    from the checkpoint's state where the trial stopped before its end: checkpoint.trial_student)."""

    with tune.Checkpoint(checkpoint_path).as_directory() as folder:
        return trial_student(folder, dest)
