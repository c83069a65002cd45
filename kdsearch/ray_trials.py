"""Everything that touches Ray lives in this module (Ray 2.60 API): the trials of a sweep.

A function trainable wraps ``fit``: each epoch it reports the metrics and a checkpoint
(the full training state for resuming, and the student alone for export). The teacher
and the data are loaded once by the driver and shared with every trial through Ray's
object store; no trial retrains the teacher. Optuna (TPE, or NSGA-II for several
objectives) picks the next settings and ASHA stops bad trials early.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import itertools
import json
import logging
import math
import os
import signal
import socket
import sys
import warnings
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Quiet, self-contained Ray defaults; set before ray is imported (a user's own setting wins).
for _key, _value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # kdsearch takes Ctrl-C itself (run_trials) and hands it to Tune as SIGUSR1, so it knows.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # The legacy reporter prints one compact status table now and then; the new output
    # engine prints a box per trial start and result, too much for a sweep of many trials.
    "RAY_AIR_NEW_OUTPUT": "0",
}.items():
    os.environ.setdefault(_key, _value)

import ray  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.logger import JsonLoggerCallback  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from kdsearch.checkpoint import build_from_spec, save_checkpoint  # noqa: E402
from kdsearch.compression import compression_report  # noqa: E402
from kdsearch.data import DatasetSplits  # noqa: E402
from kdsearch.errors import UserError  # noqa: E402
from kdsearch.search_space import SweepSpec  # noqa: E402
from kdsearch.sweep_folder import TrialRecord  # noqa: E402
from kdsearch.teachers import Teacher  # noqa: E402
from kdsearch.runtime import gpu_memory_mb, resolve_device, set_threads  # noqa: E402
from kdsearch.train import EpochState, TrainingDiverged, build_run, restore, run_epoch, student_spec  # noqa: E402

STATE_FILE = "state.pt"  # full training state, to resume the trial
STUDENT_FILE = "student.pt"  # the student alone, a kdsearch checkpoint


def user_code(spec: SweepSpec) -> list[str]:
    """The files and folders of the user's own models (import paths) that are not installed:
    sent to every Ray worker (``py_modules``), on this machine or a cluster's nodes."""
    from kdsearch.models.imported import import_models, module_file

    base = spec.example_config()
    names = {base.student, base.teacher}
    for key in ("student", "teacher"):
        dist = spec.space.get(key)
        if dist is not None and dist["kind"] == "choice":
            names.update(dist["args"])
    own = import_models(names)  # a name that cannot be imported: one line, before any trial starts
    paths = {module_file(n) for n in own}
    return sorted(str(p) for p in paths if p is not None)


def start_ray(
    address: str | None = None, num_cpus: int | None = None, quiet: bool = True, py_modules: list[str] | None = None
) -> None:
    """Join a cluster (``auto`` or ``ray://host:port``) or start a local Ray for this process;
    ``py_modules`` (the user's own code) go to every worker through the job's runtime environment."""
    if ray.is_initialized():
        if not address:
            return  # the caller's own Ray (or ours, still up): use it
        ray.shutdown()  # asked for a particular cluster: do not run on whatever Ray this process holds
    if quiet:
        # A trial that fails is listed with its reason in the summary, its error.txt and MLflow;
        # Tune's own log of it is a traceback per failure on the user's terminal.
        for name in ("ray.tune", "ray.air", "ray.train"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": not quiet,
        "configure_logging": True,
        "logging_level": "ERROR",
    }
    if py_modules:
        kwargs["runtime_env"] = {"py_modules": list(py_modules)}
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # Ray 2.60's own servers listen on every interface whatever node IP is given (newer Ray
            # binds them to the node IP): on a shared network, firewall the Ray ports.
            # Ray starts its workers at nice 15, below its own servers and the driver (nice 0):
            # on a machine whose cores the trials fill, every wake-up of those preempts a trial.
            # Trials are the work here, so they run at the driver's priority (RAY_worker_niceness
            # set by the user wins; a cluster's nodes take it from where `ray start` runs).
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=_object_store_bytes(), **kwargs)
    except ConnectionError as exc:
        raise UserError(
            f"cannot reach the Ray cluster at {address!r} ({str(exc).splitlines()[0][:120]}): start it with `ray start --head` or drop --address"
        ) from None


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is a one-line error in seconds (ray.init would retry
    for minutes, printing warnings)."""
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"cannot reach the Ray cluster at {address!r} ({reason}): start it with `ray start --head` or drop --address"
        ) from None


def _object_store_bytes() -> int:
    # Ray's default is 30% of RAM; the data and teacher here are small next to that.
    return int(os.environ.get("KDSEARCH_OBJECT_STORE_BYTES", 2 * 1024**3))


def stop_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


def tune_space(spec: SweepSpec) -> dict:
    """The YAML distributions as Tune's search space (OptunaSearch converts these; a grid is
    Tune's own grid_search, every combination once)."""
    out = {}
    for key, dist in spec.space.items():
        kind, args = dist["kind"], dist["args"]
        if spec.search.sampler == "grid":
            out[key] = tune.grid_search(list(args))
        elif kind == "uniform":
            out[key] = tune.uniform(*args)
        elif kind == "loguniform":
            out[key] = tune.loguniform(*args)
        elif kind == "int":
            out[key] = tune.randint(args[0], args[1] + 1)  # inclusive upper bound, as written in YAML
        else:
            out[key] = tune.choice(args)
    return out


def _settings_key(config: dict) -> tuple:
    return tuple(sorted((k, round(v, 10) if isinstance(v, float) else repr(v)) for k, v in config.items()))


class DistinctOptunaSearch(OptunaSearch):
    """Optuna's suggestions, never the same settings twice. A repeat of a finished trial is told
    that trial's result and drawn again; a repeat of a running trial is drawn again (NSGA-II with
    a small population repeated itself; so can any sampler over a few choices). After
    ``MAX_REDRAWS`` repeats in a row (a small discrete space, used up) the repeat is run.

    A trial that ended before ``max_epochs`` (stopped by ASHA, diverged) is told to Optuna as
    pruned, not complete: TPE then ranks it below every trial that trained all its epochs, and
    among the stopped ones by how far each got and its accuracy there. Told as complete, an
    accuracy after 1 epoch of a one-cycle schedule competed with others after 5, and TPE learned
    from the rung's noise (benchmarks/results/search-efficiency: the high learning rates that end
    best look worst after 1 epoch)."""

    MAX_REDRAWS = 200  # an ask and a tell each: milliseconds

    def __init__(self, *args, max_epochs: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._results_by_settings: dict[tuple, dict | None] = {}  # None while the trial runs
        self._settings_of: dict[str, tuple] = {}
        self._max_epochs = max_epochs

    def _ended_early(self, result: dict | None) -> bool:
        max_epochs = getattr(self, "_max_epochs", None)  # None in a searcher pickled before this existed
        return bool(max_epochs and result and result.get("training_iteration", max_epochs) < max_epochs)

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        if error or not self._ended_early(result):
            OptunaSearch.on_trial_complete(self, trial_id, result=result, error=error)
            return
        if not isinstance(self.metric, list) and isinstance(result.get(self.metric), (int, float)):
            # Tune hands the result that ended the trial to on_trial_complete only, never to
            # on_trial_result: report it, so the trial is ranked at the epoch ASHA judged it.
            with warnings.catch_warnings():  # already reported (a repeat's earlier result): Optuna keeps the first
                warnings.simplefilter("ignore")
                self._ot_trials[trial_id].report(result[self.metric], result["training_iteration"])
        OptunaSearch.on_trial_complete(self, trial_id, result=None, error=False)  # no value, no error: pruned

    def suggest(self, trial_id: str):
        for attempt in range(self.MAX_REDRAWS):
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                return config  # Tune's "wait" or "finished"
            key = _settings_key(config)
            if key not in self._results_by_settings or attempt == self.MAX_REDRAWS - 1:
                break
            earlier = self._results_by_settings[key]
            self._tell(trial_id, earlier, earlier is None)
            self._completed_trials.discard(trial_id)  # the same Tune trial draws again,
            del self._ot_trials[trial_id]  # as a new Optuna trial
        self._results_by_settings.setdefault(key, None)
        self._settings_of[trial_id] = key
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)  # Tune's warning
        self._tell(trial_id, result, error)
        key = self._settings_of.get(trial_id)
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if key is not None and result and all(m in result for m in metrics):
            self._results_by_settings[key] = {m: result[m] for m in metrics}


def _searcher(spec: SweepSpec, study: tuple[str, Path] | None = None, max_epochs: int | None = None):
    """Optuna behind Tune; ``study`` (a name and an SQLite file) keeps every trial it saw on disk,
    for optuna-dashboard and later analysis."""
    import optuna

    s = spec.search
    if s.sampler == "grid":
        return None  # Tune enumerates the grid itself
    metrics = [m for m, _ in s.objectives]
    modes = [m for _, m in s.objectives]
    if s.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    elif s.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(2, min(50, s.num_samples // 2)))
    else:
        # Optuna 5's TPE is multivariate for one objective and treats running trials as bad
        # guesses (constant liar), so parallel trials spread out.
        sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.startup_trials())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kept = {}
    if study is not None:
        name, path = study
        kept = {"study_name": name, "storage": _study_in_memory(name, Path(path))}
    if len(metrics) == 1:
        return DistinctOptunaSearch(metric=metrics[0], mode=modes[0], sampler=sampler, max_epochs=max_epochs, **kept)
    return DistinctOptunaSearch(metric=metrics, mode=modes, sampler=sampler, max_epochs=max_epochs, **kept)


def _study_in_memory(name: str, path: Path):
    """The sweep's Optuna study lives in memory while the trials run (an SQLite study cost Tune's
    loop about 25 ms a trial here, 0.2 ms in memory) and is written to ``path`` when they end
    (``save_study``). What a warm start wrote to ``path`` beforehand is read in first."""
    import optuna

    memory = optuna.storages.InMemoryStorage()
    if path.is_file():
        disk = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}")
        if name in optuna.get_all_study_names(disk):
            optuna.copy_study(from_study_name=name, from_storage=disk, to_storage=memory)
    return memory


def _optuna_study(search_alg):
    """The Optuna study inside Tune's (possibly wrapped) search algorithm, or None."""
    while search_alg is not None and not hasattr(search_alg, "_ot_study"):
        search_alg = getattr(search_alg, "searcher", None)
    return getattr(search_alg, "_ot_study", None)


def save_study(study, path: Path) -> None:
    """Write the sweep's study (its finished trials) to the SQLite file optuna-dashboard opens,
    atomically; a failure here is a warning, never a lost sweep."""
    import optuna

    if study is None:
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a resumed searcher comes back without _searcher's setup
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        disk = optuna.create_study(
            storage=f"sqlite:///{partial.resolve()}", study_name=study.study_name, directions=study.directions
        )
        disk.add_trials([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
        del disk
        os.replace(partial, path)
    except Exception as exc:  # noqa: BLE001
        partial.unlink(missing_ok=True)
        print(f"warning: could not write the Optuna study to {path} ({exc}); the sweep's results are unaffected", file=sys.stderr)


def warm_start(spec: SweepSpec, study: tuple[str, Path], trials: list[TrialRecord], other: dict) -> int:
    """Tell a new sweep's Optuna study (``study``: its name and SQLite file, before the Tuner
    loads it) the finished trials of another sweep (``other``: its manifest) over the parameters
    both spaces search: its sampler then models them from the first trial (TPE after
    ``n_startup_trials``, counting these). Returns how many trials it was told."""
    import optuna

    name, path = study
    if spec.search.sampler == "grid":
        raise UserError("--warm-start tells a searcher earlier results; a grid has none: use sampler tpe, nsga2 or random")
    objectives = [list(o) for o in spec.search.objectives]
    if [list(o) for o in other.get("objectives", [])] != objectives:
        raise UserError(
            f"--warm-start {other['name']}: it optimised {other.get('objectives')}, this sweep {objectives}: warm-start from a sweep with the same objectives"
        )
    distributions = OptunaSearch.convert_search_space(tune_space(spec))
    shared = [k for k in spec.space if k in (other.get("space") or {})]
    if not shared:
        raise UserError(
            f"--warm-start {other['name']}: it searched {', '.join(other.get('space') or {}) or 'nothing'}, this sweep "
            f"{', '.join(spec.space)}: no parameter in common to learn from"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = optuna.create_study(
        storage=optuna.storages.RDBStorage(f"sqlite:///{Path(path).resolve()}"),
        study_name=name,
        directions=["maximize" if mode == "max" else "minimize" for _, mode in spec.search.objectives],
        load_if_exists=True,
    )
    told = 0
    full = max((len(t.history) for t in trials), default=0)  # epochs of a trial that was not stopped early
    for trial in trials:
        last = trial.history[-1] if trial.history else {}
        values = [last.get(metric) for metric, _ in spec.search.objectives]
        if trial.failure is not None or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            continue
        params = {}
        for key in shared:
            if key in trial.params:
                dist = distributions[key]
                try:
                    if dist._contains(dist.to_internal_repr(trial.params[key])):  # a changed range: only what is inside
                        params[key] = trial.params[key]
                except (ValueError, TypeError):
                    pass
        if params:
            # Stopped early (ASHA): pruned at the epoch it reached, as during its own sweep.
            early = len(trial.history) < full
            target.add_trial(
                optuna.trial.create_trial(
                    params=params,
                    distributions={k: distributions[k] for k in params},
                    values=None if early else [float(v) for v in values],
                    state=optuna.trial.TrialState.PRUNED if early else optuna.trial.TrialState.COMPLETE,
                    intermediate_values={len(trial.history): float(values[0])} if early and len(values) == 1 else None,
                )
            )
            told += 1
    return told


def _scheduler(spec: SweepSpec, max_epochs: int):
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


def _payload(data: DatasetSplits) -> dict:
    """What trials get of the data: numpy arrays, which Ray's object store hands to every worker
    of a node without a copy; no test images (trials select on validation; the driver tests)."""
    out = {k: getattr(data, k) for k in ("name", "class_names", "multilabel", "mean", "std")}
    out.update({k: getattr(data, k).numpy() for k in ("train_x", "train_y", "val_x", "val_y")})
    out.update(test_x=data.test_x[:0].numpy(), test_y=data.test_y[:0].numpy())
    return out


def _unpack(payload: dict) -> DatasetSplits:
    with warnings.catch_warnings():  # read-only views of the object store: training only reads them
        warnings.simplefilter("ignore", UserWarning)
        values = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in payload.items()}
    return DatasetSplits(**values)


def _teacher_payload(teacher: Teacher) -> dict:
    """How a trial gets the teacher: its spec and weights; TorchScript as its saved bytes; a
    module the user passed (no spec) as itself (Ray pickles it by value or by import)."""
    payload = {"arch": teacher.arch, "metrics": teacher.metrics, "spec": teacher.spec}
    if teacher.spec is not None:
        payload["state_dict"] = {k: v.detach().cpu() for k, v in teacher.model.state_dict().items()}
    elif isinstance(teacher.model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(teacher.model.cpu(), buffer)
        payload["torchscript"] = buffer.getvalue()
    else:
        payload["module"] = teacher.model.cpu()
    return payload


def _unpack_teacher(t: dict) -> Teacher:
    if "state_dict" in t:
        model = build_from_spec(t["spec"])
        model.load_state_dict(t["state_dict"])
    elif "torchscript" in t:
        model = torch.jit.load(io.BytesIO(t["torchscript"]), map_location="cpu")
    else:
        model = t["module"]
    return Teacher(model, t["arch"], t["metrics"], None, t["spec"])


def _static_metrics(architecture: dict, data: DatasetSplits, needs_latency: bool) -> dict:
    """Size metrics of the student architecture (constant over training), reported each epoch
    so that Optuna can optimise them alongside accuracy."""
    report = compression_report(
        build_from_spec(architecture), None, (data.in_channels, *data.image_size), measure_speed=needs_latency
    )
    return {k: v for k, v in report.items() if k in ("student/params", "student/flops", "student/size_mb", "latency/cpu_ms")}


_ARCHITECTURE_KEYS = ("student", "student_width", "student_args", "stem")


def architecture_metrics(spec: SweepSpec, data: DatasetSplits) -> dict[str, dict]:
    """Size metrics (and latency, when it is an objective) of every student architecture the
    space can draw, measured once in the driver before any trial trains: a latency timed inside
    a trial shares the cores with the other trials and differs for the same architecture. A
    space that draws the architecture from a continuous range gets {} (trials measure it)."""
    choices = {}
    for key in _ARCHITECTURE_KEYS:
        dist = spec.space.get(key)
        if dist is not None and dist["kind"] != "choice":
            return {}
        choices[key] = dist["args"] if dist is not None else [None]
    needs_latency = any(m == "latency/cpu_ms" for m, _ in spec.search.objectives)
    first = {key: dist["args"][0] for key, dist in spec.space.items()}
    out = {}
    for combo in itertools.product(*choices.values()):
        drawn = {k: v for k, v in zip(_ARCHITECTURE_KEYS, combo) if v is not None}
        student = student_spec(spec.trial_config({**first, **drawn}), data)
        key = json.dumps(student, sort_keys=True)
        if key not in out:
            out[key] = _static_metrics(student, data, needs_latency)
    return out


class EpochTrainable(tune.Trainable):
    """A trial: one epoch per ``step()``, run in the actor's main thread (a function trainable
    runs in a thread beside Tune's own and trained at 0.90x a plain Ray task here, this at 0.95x:
    benchmarks/speed.py). Tune checkpoints it after every epoch and keeps the best; it restores
    from the last one on a retry or ``--resume``; a reused actor is reset for the next trial."""

    def setup(self, config: dict, **shared) -> None:
        self._shared = shared  # spec, data_payload, teacher_payload, threads, teacher_outputs, static_by_architecture, gpu_share
        # What this worker holds before its first trial (Ray, torch, kdsearch: ~500,000 objects)
        # stays for the actor's life: kept out of the garbage collector, a full collection
        # between trials (_release) takes 0.1 ms, not 80-150 ms, and so do the automatic ones.
        # (No collection first: a new worker's imports leave ~20 garbage objects, not worth 0.15 s.)
        gc.freeze()
        self._start(config)

    def _start(self, sampled: dict) -> None:
        sh = self._shared
        spec: SweepSpec = sh["spec"]
        self.spec, self.run, self.failed = spec, None, None
        self.data = _unpack(sh["data_payload"])
        cfg = dataclasses.replace(spec.trial_config(sampled), threads=sh["threads"])
        gpus = ray.get_gpu_ids()
        if not gpus and cfg.device == "auto":
            cfg = dataclasses.replace(cfg, device="cpu")  # no GPU of its own: never another trial's
        if gpus and sh["gpu_share"] < 1 and torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(sh["gpu_share"])  # a fractional trial keeps to its share
        self.cfg, self.epoch, self.best_val = cfg, 0, -math.inf
        try:
            self.device = resolve_device(cfg.device)
        except UserError:
            self.device = torch.device("cpu")  # build_run below reports the bad device in its one line
        # What the GPU holds before this trial builds anything: a reused actor's next trial must
        # start where the first did (nothing of the last trial kept), benchmarks/gpu.py reads it.
        start = gpu_memory_mb(self.device, reset_peak=True)
        self.own_spec = student_spec(cfg, self.data)
        static = dict((sh["static_by_architecture"] or {}).get(json.dumps(self.own_spec, sort_keys=True)) or {})
        if not static:
            latency = any(m == "latency/cpu_ms" for m, _ in spec.search.objectives)
            static = _static_metrics(self.own_spec, self.data, needs_latency=latency)
        static["trial/node"] = ray.get_runtime_context().get_node_id()  # which cluster node ran this epoch
        static["trial/gpu_ids"] = ",".join(str(g) for g in gpus)  # the GPUs Ray gave it ("" for none)
        if start:
            static["gpu/allocated_at_start_mb"] = start["gpu/allocated_mb"]
        self.static = static
        teacher = _unpack_teacher(sh["teacher_payload"]) if sh["teacher_payload"] is not None else None
        set_threads(cfg.threads)
        try:
            self.run = build_run(cfg, self.data, teacher, sh["teacher_outputs"], lambda _: None)
        except UserError as exc:
            self.failed = exc  # reported by the first step

    def step(self) -> dict:
        if self.failed is None:
            try:
                metrics, self.best_val = run_epoch(self.run, self.data, self.epoch, self.best_val)
                self.epoch += 1
                memory = {k: v for k, v in gpu_memory_mb(self.device).items() if k == "gpu/peak_mb"}
                return {**metrics, **self.static, **memory, "done": self.epoch >= self.cfg.epochs}
            except (TrainingDiverged, UserError) as exc:
                self.failed = exc
        # Retrying the same settings would fail the same way (a divergence, or a setting that
        # cannot work, such as AT weights for stages the models do not have): end the trial now
        # with the worst score, so the searcher avoids this region, and keep the reason.
        worst = {m: (0.0 if mode == "max" else float(1e30)) for m, mode in self.spec.search.objectives}
        kind = "trial/diverged" if isinstance(self.failed, TrainingDiverged) else "trial/invalid"
        return {**self.static, **worst, kind: 1.0, "trial/error": str(self.failed), "done": True}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        if self.run is None or self.failed is not None:
            return  # nothing worth keeping: the best checkpoint stays an earlier epoch's
        run = self.run
        torch.save(
            EpochState(self.epoch, self.best_val, run.student, run.method, run.optimizer, run.scheduler).training_state(),
            Path(checkpoint_dir) / STATE_FILE,
        )
        metrics = {k: v for k, v in (self._last_result or {}).items() if k.startswith(("val/", "train/"))}
        save_checkpoint(
            Path(checkpoint_dir) / STUDENT_FILE, run.student, self.own_spec, dataset=self.data.info(), metrics=metrics,
            config=self.cfg.to_dict(),
        )  # fmt: skip

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        state_file = Path(checkpoint_dir) / STATE_FILE
        if self.run is not None and state_file.is_file():
            state = torch.load(state_file, map_location="cpu", weights_only=True)
            self.epoch, self.best_val = restore(self.run, state)

    def reset_config(self, new_config: dict) -> bool:
        self._release()
        self._start(new_config)
        return True

    def cleanup(self) -> None:
        self._release()

    def _release(self) -> None:
        # A reused actor runs the next trial: nothing of this one may stay (GPU memory, graphs).
        if self.run is not None:
            for tap in self.run.taps:
                tap.close()
        self.run = self.data = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if "torch._dynamo" in sys.modules:  # only a compiled run has graphs to drop (importing Dynamo takes ~2 s)
            torch._dynamo.reset()


class _Progress(tune.CLIReporter):
    """Ray Tune's status table, trimmed to the searched settings and the metrics that
    matter, at most every 20 s, on stderr (stdout keeps the final summary)."""

    def report(self, trials, done, *sys_info):
        print(self._progress_str(trials, done, *sys_info), file=sys.stderr, flush=True)


def _reporter(spec: SweepSpec) -> tune.CLIReporter:
    metrics = {"epoch": "epochs", spec.search.metric: spec.search.metric, "val/best_acc": "best val/acc"}
    return _Progress(
        metric_columns=metrics,
        parameter_columns=list(spec.space)[:6],
        max_report_frequency=20,
        metric=spec.search.metric,
        mode=spec.search.mode,
        sort_by_metric=True,
        max_progress_rows=12,
    )


class _ForwardResults(tune.Callback):
    """Hands trial events to a tracker (kdsearch.tracking) without exposing Ray types."""

    def __init__(self, tracker):
        self.tracker = tracker

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.trial_started(trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.tracker.trial_result(trial.trial_id, dict(trial.config), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.trial_finished(trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.trial_finished(trial.trial_id, "FAILED", error=str(getattr(trial, "error_msg", "") or "")[:500])


def gpu_elsewhere(device: str) -> bool:
    """Whether this driver has no GPU for ``device`` while the Ray cluster has GPUs."""
    if device == "cpu" or torch.cuda.is_available():
        return False
    return ray.cluster_resources().get("GPU", 0) >= 1


def run_on_a_gpu(fn: Callable, *args):
    """``fn(*args)`` as a Ray task holding one GPU of the cluster; returns its result and the node it ran on."""

    def task(*a):
        return fn(*a), ray.get_runtime_context().get_node_id()

    try:
        result, node = ray.get(ray.remote(num_gpus=1, max_retries=0)(task).remote(*args))
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, UserError):
            raise exc.cause from None  # the one line, as if it had run here
        raise
    return (*result, node)


def gpus_per_trial_default(gpus_per_trial: float | None) -> float:
    """None: one GPU per trial when the cluster has GPUs, else none (Ray leaves a GPU-less
    trial's CUDA_VISIBLE_DEVICES alone, so trials without a GPU of their own are kept off them)."""
    if gpus_per_trial is not None:
        return gpus_per_trial
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def check_storage(storage: str, shared: bool) -> None:
    """A local --storage exists on this machine only: on a cluster of several nodes a trial on
    another node fails at its first checkpoint, unless every node mounts the folder."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if "://" not in storage and len(nodes) > 1 and not shared:
        raise UserError(
            f"--storage {storage} is a folder on this machine but the Ray cluster has {len(nodes)} nodes: pass "
            "--storage s3://bucket/path (or gs://...), or --shared-storage if every node mounts that folder"
        )


def check_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    total = ray.cluster_resources()
    if gpus_per_trial > total.get("GPU", 0):
        raise UserError(
            f"--gpus-per-trial {gpus_per_trial} but the Ray cluster has {total.get('GPU', 0):g} GPUs: lower it, or join a cluster with GPUs (--address)"
        )
    if cpus_per_trial > total.get("CPU", 0):
        raise UserError(f"--cpus-per-trial {cpus_per_trial} but the Ray cluster has {total.get('CPU', 0):g} CPUs: lower it")


_USER_MAX_PENDING = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")


def trials_at_once(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the Ray cluster runs at the same time with these resources each."""
    total = ray.cluster_resources()
    fits = total.get("CPU", 0) / cpus_per_trial
    if gpus_per_trial > 0:
        fits = min(fits, total.get("GPU", 0) / gpus_per_trial)
    return max(1, math.floor(fits + 1e-9))


def run_trials(
    spec: SweepSpec,
    data: DatasetSplits,
    teacher: Teacher | None,
    *,
    storage: str,
    name: str,
    resume: bool,
    cpus_per_trial: float = 1,
    gpus_per_trial: float | None = None,
    shared_storage: bool = False,
    max_concurrent: int | None = None,
    tracker=None,
    verbose: int = 1,
    teacher_outputs=None,
    stop_check: Callable[[], str | None] | None = None,
    study_db: Path | None = None,
) -> list[TrialRecord]:
    """Run (or resume) the sweep in ``storage/name`` and return every trial. ``stop_check`` is
    asked every second while the trials run; a reason it returns stops them gracefully (state
    saved, resumable) and raises ``TrialsStopped``."""
    gpus_per_trial = gpus_per_trial_default(gpus_per_trial)
    check_resources(cpus_per_trial, gpus_per_trial)
    check_storage(storage, shared_storage)
    epochs = spec.example_config().epochs
    teacher_payload = _teacher_payload(teacher) if teacher is not None else None
    trainable = tune.with_parameters(
        EpochTrainable,
        spec=spec,
        data_payload=_payload(data),
        teacher_payload=teacher_payload,
        threads=max(1, math.ceil(cpus_per_trial)),
        teacher_outputs=teacher_outputs,
        static_by_architecture=architecture_metrics(spec, data),
        gpu_share=gpus_per_trial,
    )
    trainable = tune.with_resources(trainable, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    path = os.path.join(storage, name)
    # Each trial's params.json and result.json are all kdsearch reads (and what Tune restores
    # from); Tune's CSV and TensorBoard copies of every result cost time per trial and epoch.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    callbacks: list = [JsonLoggerCallback()]
    if tracker is not None:
        callbacks.append(_ForwardResults(tracker))
    # How many trials Tune may be starting at once: under a searcher it starts one at a time,
    # each waiting for the last one's actor to come up (on an H200, 4 trials at 0.25 GPU came up
    # 20 s apart and at most 3 ever ran). As many as the cluster runs now; not a cap on how many
    # run (an autoscaling cluster still grows). A value the user set wins.
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = _USER_MAX_PENDING or str(trials_at_once(cpus_per_trial, gpus_per_trial))
    searcher = None
    if resume:
        if not tune.Tuner.can_restore(path):
            raise UserError(f"nothing to resume at {path}: run the sweep without --resume first (same --name and --storage)")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        searcher = _searcher(spec, (name, study_db) if study_db is not None else None, max_epochs=epochs)
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(spec),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=_scheduler(spec, epochs),
                num_samples=1 if spec.search.sampler == "grid" else spec.search.num_samples,
                max_concurrent_trials=max_concurrent or spec.search.max_concurrent,
                reuse_actors=True,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                callbacks=callbacks,
                verbose=verbose,
                progress_reporter=_reporter(spec) if verbose else None,
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=1,
                    checkpoint_score_attribute=spec.search.metric,
                    checkpoint_score_order=spec.search.mode,
                    checkpoint_frequency=1,  # every epoch: --resume and retries lose none
                    checkpoint_at_end=True,
                ),
                failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
            ),
        )
    # The driver's objects so far (Ray, torch, MLflow, the data) live as long as the sweep: kept
    # out of the garbage collector while Tune's loop runs, its automatic full collections, each
    # ~100 ms among them, stay short.
    gc.freeze()
    try:
        with _graceful_ctrl_c() as interrupted, _stop_when(stop_check) as stopped, _calm_tune_loop():
            grid = tuner.fit()
    finally:
        gc.unfreeze()  # a Python API user's next sweep: this one's objects may go
        if study_db is not None:
            # a resumed sweep's searcher is the one Tune restored inside the tuner
            restored = getattr(getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None), "search_alg", None)
            save_study(_optuna_study(searcher if searcher is not None else restored), study_db)
    records = [_record(result, spec, storage) for result in grid]
    if interrupted.is_set():
        raise TrialsInterrupted(records)
    if stopped:
        raise TrialsStopped(stopped[0], records)
    return records


# Between events, Tune's loop (Ray 2.60's TuneController.step) wakes every 0.1 s: it asks the
# searcher, checks resources and the experiment state's paths while every trial trains (py-spy
# on the driver during one 2-CPU trial: 107 samples holding the GIL in 12 s at 500 Hz, with this
# 35; its CPU by /proc, 1.24-1.66% of a core, with this 1.04-1.15%). On a machine whose cores
# the trials fill, each wake-up preempts a trial.
# Every event (a result, an actor up, a failure, a placement group ready) still ends the wait
# at once; a graceful stop (Ctrl-C, a full disk) is seen within this wait.
IDLE_WAIT_S = 1.0


@contextlib.contextmanager
def _calm_tune_loop():
    """Tune's idle wait, 0.1 s, raised to IDLE_WAIT_S while the trials run (under a later Ray
    that has moved Tune's actor manager, its own loop runs unchanged)."""
    try:
        from ray.air.execution._internal.actor_manager import RayActorManager
    except ImportError:
        yield
        return
    original = RayActorManager.next

    def next_event(self, timeout=None):
        return original(self, timeout if timeout is None else max(timeout, IDLE_WAIT_S))

    RayActorManager.next = next_event
    try:
        yield
    finally:
        RayActorManager.next = original


class TrialsInterrupted(Exception):
    """Ctrl-C during the trials: Tune stopped them and saved its state; ``records`` as far as they got."""

    def __init__(self, records: list[TrialRecord]):
        super().__init__(f"interrupted with {len(records)} trials started")
        self.records = records


class TrialsStopped(Exception):
    """The caller's ``stop_check`` stopped the trials (say, the storage filled up); state saved."""

    def __init__(self, reason: str, records: list[TrialRecord]):
        super().__init__(reason)
        self.reason, self.records = reason, records


def _stop_tune() -> None:
    os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own graceful stop: experiment state saved, trials resumable


@contextlib.contextmanager
def _stop_when(check: Callable[[], str | None] | None):
    """A thread that asks ``check`` every second and stops Tune gracefully on the first reason."""
    reasons: list[str] = []
    done = threading.Event()

    def watch():
        while not done.wait(1.0):
            reason = check()
            if reason:
                reasons.append(reason)
                _stop_tune()
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
def _graceful_ctrl_c():
    """The first Ctrl-C stops the trials the way Tune stops on its own signal (SIGUSR1): the
    experiment state is saved and unfinished trials resume later. A second one stops at once."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_sigint(signum, frame):
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        print("kdsearch: stopping the trials and saving their state (Ctrl-C again stops at once)", file=sys.stderr, flush=True)
        _stop_tune()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def can_resume(path: str) -> bool:
    """Whether Tune saved enough of the sweep at ``path`` to continue it."""
    return tune.Tuner.can_restore(path)


def _record(result, spec: SweepSpec, storage: str) -> TrialRecord:
    frame = result.metrics_dataframe
    history = frame.to_dict("records") if frame is not None else []
    best = None
    try:
        checkpoint = result.get_best_checkpoint(spec.search.metric, spec.search.mode)
    except (RuntimeError, ValueError, KeyError):
        checkpoint = None
    checkpoint = checkpoint or result.checkpoint
    if checkpoint is not None:
        best = checkpoint.path
        if "://" in storage and "://" not in best:  # pyarrow gives object-store paths without their scheme
            best = f"{storage.split('://', 1)[0]}://{best.lstrip('/')}"
    trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.removeprefix("trial_")
    params = {k: v for k, v in (result.config or {}).items()}
    return TrialRecord(
        trial_id=str(trial_id),
        params=params,
        history=history,
        status="ERROR" if result.error else "TERMINATED",
        error=str(result.error).strip().splitlines()[-1][:300] if result.error else None,
        best_checkpoint=best,
        path=result.path,
    )


def copy_from_checkpoint(checkpoint_path: str, filename: str, dest: Path) -> Path:
    """Copy one file out of a trial checkpoint, local or in remote storage, to ``dest``."""
    import shutil

    with tune.Checkpoint(checkpoint_path).as_directory() as folder:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(folder) / filename, dest)
    return dest
