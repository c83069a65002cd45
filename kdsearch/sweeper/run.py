"""A sweep from start to finish, in named steps: plan it, start MLflow and Ray, prepare what
every trial shares (the data, the teacher, its outputs), run the trials (``ray_trials``),
finalise the best student in the sweep folder (``search.folder``), mirror it all to MLflow
(``tracking``)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdsearch import ray_trials
from kdsearch.data import DatasetSplits, default_data_dir
from kdsearch.errors import UserError
from kdsearch.models.checkpoint import load_model, save_checkpoint
from kdsearch.runtime import interrupts, object_storage
from kdsearch.runtime.interrupts import Interrupted
from kdsearch.runtime.provenance import as_tags, provenance
from kdsearch.search.folder import MANIFEST, resolve_sweep
from kdsearch.search.options import SweepOptions
from kdsearch.search.record import TrialRecord, ranked
from kdsearch.search.space import SweepSpec
from kdsearch.search.study import warm_start
from kdsearch.sweeper.mirror import BestStudent, guard_mlflow, label_study, mirror
from kdsearch.sweeper.plan import SweepPlan, plan_sweep, resume_command
from kdsearch.sweeper.report import build_report, pareto_trials, trial_table
from kdsearch.sweeper.shared import SweepInputs, prepare_shared
from kdsearch.sweeper.smoke import smoke_check
from kdsearch.teacher.weights import file_sha256, reference_teacher
from kdsearch.tracking import runs as tracking
from kdsearch.training.engine import final_metrics


@dataclass(kw_only=True)
class SweepSummary:
    name: str
    sweep_dir: str
    out_dir: Path  # local folder with best/: the sweep folder, or for a URI its local mirror
    table: object  # pandas.DataFrame, one row per trial, best first
    best_params: dict
    best_config: dict
    best_metrics: dict
    checkpoint: Path
    tracking_uri: str
    parent_run_id: str
    objectives: list
    failures: list[tuple[str, str]]
    synced: bool = True  # False: MLflow was unreachable at the end; `kdsearch sync` catches up
    smoke_check: str | None = None  # --smoke: the line that says the set-up learns
    pareto: list[str] | None = None  # several objectives: the undominated trials, to export with --trial
    methods: object | None = None  # a sweep comparing methods: the best trial of each (pandas.DataFrame), best first

    @property
    def trials(self):
        """Every trial as a pandas DataFrame, best first."""
        return self.table

    @property
    def run_id(self) -> str:
        """The sweep's MLflow parent run."""
        return self.parent_run_id


def _sweep_params(spec: SweepSpec) -> dict:
    """The parent run's params: every fixed setting, the space and the search settings."""
    base = spec.example_config()
    params = {k: v for k, v in base.to_dict().items() if k not in spec.space and k != "method_args"}
    params.update({f"method_args.{k}": v for k, v in base.method_args.items() if k not in spec.space})
    params.update({f"space.{k}": json.dumps(v) for k, v in spec.space.items()})
    params.update(
        {
            "search.sampler": spec.search.sampler,
            "search.scheduler": spec.search.scheduler,
            "search.num_samples": spec.search.num_samples,
            "search.objectives": json.dumps(spec.search.objectives),
            "search.seed": spec.search.seed,
        }
    )
    return params


def start_services(plan: SweepPlan, opts: SweepOptions):
    """MLflow's parent run and Ray, side by side: a new database's tables take ~1 s to create
    while Ray starts (~2.3 s here). Returns the tracker and whether Ray was started here (else the
    caller's own Ray is used and left up); MLflow unreachable is one line, before any trial."""

    base = plan.spec.example_config()
    tracker = tracking.SweepTracker(
        plan.tracking_uri,
        experiment=plan.name,
        sweep_dir=plan.sweep_dir,
        tags={"method": ",".join(plan.spec.methods), "dataset": base.dataset, "teacher": base.teacher, "student": base.student}
        | as_tags(provenance()),
    )
    failed: dict = {}

    def start_tracking():
        try:
            tracker.start(_sweep_params(plan.spec))
        except BaseException as exc:  # re-raised in the main thread, below
            failed["error"] = exc

    setup_thread = threading.Thread(target=start_tracking, name="kdsearch-mlflow-start", daemon=True)
    setup_thread.start()
    # torch's FLOP counter (the students' size metrics, measured before the trials) imports
    # Dynamo, ~2 s: while Ray starts, not after.
    threading.Thread(target=lambda: importlib.import_module("torch._dynamo"), name="kdsearch-preload", daemon=True).start()
    try:
        ray_started = ray_trials.start_ray(opts.address, quiet=opts.verbose < 2, py_modules=plan.user_code)
    finally:
        setup_thread.join()  # a cluster that cannot be reached: never leave MLflow half set up
    if "error" in failed:
        if ray_started:
            ray_trials.stop_ray()
        raise failed["error"]
    return tracker, ray_started


@dataclass
class TestedBest:
    trial: TrialRecord
    config: dict
    metrics: dict
    checkpoint: Path
    model: object  # the student, for registering
    report: dict | None


def best_trial(plan: SweepPlan, trials: list[TrialRecord]) -> TrialRecord | None:
    """The trial with the best score (``search.record.ranked``: ties go to the earlier trial) that kept a checkpoint."""
    objective = plan.spec.search.objective
    usable = [t for t in trials if t.best_checkpoint and t.usable(objective)]
    return ranked(usable, objective)[0] if usable else None


def finalise_best(plan: SweepPlan, shared: SweepInputs, best: TrialRecord) -> TestedBest:
    """Test the best trial's student, write ``best/`` and the report: everything the sweep
    produced is written locally first; MLflow only mirrors it."""

    if plan.folder.uri is not None:
        object_storage.pull(plan.folder.uri)  # the trials' logs, which the report reads
    best_cfg = dataclasses.replace(plan.spec.trial_config(dict(best.params)), threads=None)
    if best_cfg.data_dir is None and best_cfg.dataset != "digits":  # the folder read, so a rerun elsewhere finds it
        best_cfg = dataclasses.replace(best_cfg, data_dir=str(default_data_dir().resolve()))
    fixed = plan.spec.fixed_config()
    data, teacher = shared.data, shared.teacher
    if teacher is not None and teacher.path is not None:
        # best/config.yaml names the exact teacher the trials distilled from, so a rerun uses it.
        best_cfg = dataclasses.replace(best_cfg, teacher_checkpoint=str(teacher.path), teacher_sha256=file_sha256(teacher.path))
    if teacher is None:
        teacher = reference_teacher(fixed, data)
    checkpoint = ray_trials.copy_student(best.best_checkpoint, plan.folder.best_student)
    model, payload = load_model(checkpoint)
    metrics = {
        **final_metrics(model, data, teacher, best_cfg),
        **{k: v for k, v in payload["metrics"].items() if k.startswith("val/")},
    }
    # Rewritten so the checkpoint carries its test and compression metrics, a sample of validation
    # images to verify exports against where the data is not, and how to reproduce it.
    save_checkpoint(
        checkpoint,
        model,
        payload["model"],
        dataset=payload["dataset"],
        metrics=metrics,
        config=best_cfg.to_dict(),
        sweep={"name": plan.name, "trial": best.trial_id, "params": best.params},
        verify=data.verify_sample(),
        provenance=shared.manifest["provenance"],
    )
    plan.folder.write_best(best_cfg.to_dict(), metrics, shared.manifest["provenance"])
    plan.folder.write_manifest(
        {**shared.manifest, "best_trial": best.trial_id, "best_params": best.params, "best_metrics": metrics}
    )
    started = time.perf_counter()
    report = build_report(plan.folder.path)
    report["seconds"] = time.perf_counter() - started
    written = [plan.folder.path / MANIFEST, *sorted(p for p in plan.folder.best_dir.iterdir() if p.is_file()), *report["files"]]
    plan.folder.publish(written + [plan.folder.study_db] * plan.folder.study_db.is_file())
    return TestedBest(best, best_cfg.to_dict(), metrics, checkpoint, model, report)


def mirror_to_mlflow(plan: SweepPlan, tracker, trials: list[TrialRecord], best: TestedBest, register: bool) -> bool:
    """The sweep's folder mirrored to MLflow (``mirror.mirror``); False, said, where MLflow failed."""
    student = BestStudent(best.trial.params, best.config, best.metrics, best.checkpoint)
    methods = best.report["methods"] if best.report is not None else None

    def step():
        mirror(
            tracker,
            trials,
            plan.spec.search.objective,
            student,
            register_as=f"{plan.name}-student" if register else None,
            report_files=best.report["files"] if best.report is not None else [],
            methods=methods.to_dict("records") if methods is not None else None,
        )

    return guard_mlflow(step, plan.tracking_uri, plan.name)


def _warm_start(plan: SweepPlan, opts: SweepOptions, shared: SweepInputs, log: Callable[[str], None]) -> None:

    other = resolve_sweep(opts.warm_start, plan.storage)
    if other.path.resolve() == plan.folder.path.resolve():
        raise UserError(
            f"--warm-start {opts.warm_start} is this sweep: name a finished one, or use --resume to continue this one"
        )
    manifest = other.read_manifest()
    known = warm_start(plan.spec, (plan.name, plan.folder.study_db), other.trials(), manifest)
    if known == 0:
        raise UserError(f"--warm-start {opts.warm_start}: it has no finished trial inside this sweep's space to learn from")
    shared.manifest["warm_start"] = {"sweep": str(other.path), "trials": known}
    plan.folder.write_manifest(shared.manifest)
    log(f"warm start: the searcher knows {known} trials of {other.path.name} before its first trial")


def interrupted(plan: SweepPlan, opts: SweepOptions, tracker, exc: BaseException) -> Interrupted:
    """Ctrl-C: nothing is finalised (no best/, no best config or model in MLflow), the parent
    run is marked KILLED, and the message says how to go on. A new sweep stopped before its
    trials had any state leaves no folder behind, so the same command starts it again."""

    if tracker is not None and tracker.parent_id is not None:
        guard_mlflow(lambda: tracker.finish("KILLED"), plan.tracking_uri, plan.name)
    total = plan.spec.search.num_samples
    if _can_resume(plan):
        started = len(exc.records) if isinstance(exc, ray_trials.TrialsInterrupted) else "some"
        return Interrupted(
            f"sweep {plan.name!r} interrupted with {started} of {total} trials started; nothing was finalised: "
            f"continue it with `{resume_command(plan, opts)}`"
        )
    if not opts.resume:
        _forget_unstarted(plan, opts, None)
        return Interrupted(
            f"sweep {plan.name!r} interrupted before its trials started; nothing was kept: run the same command again"
        )
    return Interrupted(f"sweep {plan.name!r} interrupted; continue it with `{resume_command(plan, opts)}`")


def _forget_unstarted(plan: SweepPlan, opts: SweepOptions, tracker) -> None:
    """A new sweep that stopped before any trial state was saved leaves no folder behind, so
    the same command can simply be run again."""

    if tracker is not None and tracker.parent_id is not None:
        guard_mlflow(lambda: tracker.finish("FAILED"), plan.tracking_uri, plan.name)
    if not opts.resume and not _can_resume(plan):
        if plan.local:
            shutil.rmtree(plan.sweep_dir, ignore_errors=True)
        else:
            object_storage.delete(plan.sweep_dir)
            shutil.rmtree(plan.folder.path, ignore_errors=True)


def _can_resume(plan: SweepPlan) -> bool:

    try:
        return ray_trials.can_resume(plan.sweep_dir)
    except OSError:  # object storage gone: keep whatever is there
        return True


def run_sweep(path: str | Path, opts: SweepOptions, log: Callable[[str], None] = print) -> SweepSummary:
    with (
        interrupts.remembered()
    ):  # a Ctrl-C while the teacher trains is never lost (run_trials' own handler takes over for the trials)
        return run_planned(plan_sweep(path, opts), opts, log)


def run_planned(plan: SweepPlan, opts: SweepOptions, log: Callable[[str], None] = print) -> SweepSummary:
    """The sweep ``plan_sweep`` planned (the command line plans before it imports Ray and MLflow,
    so that a mistake is one line at once); releases the plan's lock."""
    with interrupts.remembered():
        try:
            return _run_planned(plan, opts, log)
        finally:
            plan.lock.release()


def _run_planned(plan: SweepPlan, opts: SweepOptions, log: Callable[[str], None]) -> SweepSummary:
    tracker, shared, trials, timings = _run_trials(plan, opts, log)
    winner = best_trial(plan, trials)
    if winner is None:
        guard_mlflow(lambda: (tracker.sync(trials), tracker.finish("FAILED")), plan.tracking_uri, plan.name)
        reasons = "; ".join(f"{t.trial_id}: {t.failure or 'no result'}" for t in trials[:3])
        raise UserError(f"no trial of sweep {plan.name!r} produced a checkpoint ({reasons}); see {plan.sweep_dir}")
    best = finalise_best(plan, shared, winner)
    tracker.drain()  # the live logging's thread has caught up: its time is all counted
    live_mlflow_s, started = tracker.seconds, time.perf_counter()
    synced = mirror_to_mlflow(plan, tracker, trials, best, opts.register)
    if synced:
        label_study(plan.folder, plan.name, tracker)
    # Where the sweep's time went (benchmarks/speed.py and gpu.py read these): the data and the
    # teacher (trained or loaded, and its outputs cached), the trials (Ray Tune's loop,
    # including the live MLflow logging it does), that logging, the MLflow work at the end
    # (catching up, the best student, registering), the report.
    timings.update(mlflow_live_s=live_mlflow_s, mlflow_end_s=time.perf_counter() - started, report_s=best.report["seconds"])
    plan.folder.update_manifest(timings=timings)
    plan.folder.publish([plan.folder.path / MANIFEST])
    table = trial_table(trials, shared.manifest)
    return SweepSummary(
        name=plan.name,
        sweep_dir=plan.sweep_dir,
        out_dir=plan.folder.path,
        table=table,
        best_params=dict(winner.params),
        best_config=best.config,
        best_metrics=best.metrics,
        checkpoint=best.checkpoint,
        tracking_uri=plan.tracking_uri,
        parent_run_id=tracker.parent_id,
        objectives=shared.manifest["objectives"],
        failures=[(t.trial_id, t.failure) for t in trials if t.failure is not None],
        synced=synced,
        smoke_check=smoke_check(shared.data, shared.teacher, best.metrics) if opts.smoke else None,
        pareto=pareto_trials(table, plan.spec.search.objectives),
        methods=best.report["methods"] if best.report is not None else None,
    )


def _run_trials(plan: SweepPlan, opts: SweepOptions, log: Callable[[str], None]):
    """MLflow and Ray up, what the trials share prepared, the trials run; every way this can
    stop (Ctrl-C, a full disk, a user's mistake) ends here in one line, a Ray started here always stopped.
    Returns (tracker, shared, trials, timings so far)."""

    tracker, shared, ray_started = None, None, False
    try:
        tracker, ray_started = start_services(plan, opts)
        prepare_started = time.perf_counter()
        shared = prepare_shared(plan, tracker, opts, log)
        prepare_s = time.perf_counter() - prepare_started
        if opts.warm_start and not opts.resume:
            _warm_start(plan, opts, shared, log)
        trials_started = time.perf_counter()
        trials = ray_trials.run_trials(
            plan.spec,
            shared.data,
            shared.teacher,
            opts,
            storage=plan.storage,
            name=plan.name,
            tracker=tracker,
            teacher_outputs=shared.teacher_outputs,
            stop_check=shared.guard.stop_reason if shared.guard is not None else None,
            study_db=plan.folder.study_db,
            placement=shared.placement,
            log=log,
            ship_code=None if ray_started else plan.user_code,  # a Ray kdsearch started has them (py_modules)
        )
    except (ray_trials.TrialsInterrupted, KeyboardInterrupt) as exc:
        raise interrupted(plan, opts, tracker, exc) from None
    except ray_trials.TrialsStopped:
        guard_mlflow(lambda: tracker.finish("KILLED"), plan.tracking_uri, plan.name)
        raise shared.guard.error(resume_command(plan, opts)) from None
    except UserError:
        _forget_unstarted(plan, opts, tracker)
        raise
    except Exception as exc:
        if shared is not None and shared.guard is not None and shared.guard.caused(exc):  # the disk filled faster than the watch
            raise shared.guard.error(resume_command(plan, opts)) from None
        raise
    finally:
        if ray_started:  # a Ray the caller's program holds stays up for it
            ray_trials.stop_ray()
        if shared is not None and shared.guard is not None:
            shared.guard.release()
    return tracker, shared, trials, {"prepare_s": prepare_s, "trials_s": time.perf_counter() - trials_started}


def sweep(
    space: str | Path | dict,
    data: DatasetSplits | None = None,
    teacher: object | None = None,  # a kdsearch Teacher or a torch.nn.Module
    *,
    log: Callable[[str], None] = print,
    **options,
):
    """Run a sweep over ``space`` (a search-space YAML file, or the same as a dict) and return its
    summary: ``best_config``, ``checkpoint`` (the best student), ``trials`` (a pandas DataFrame,
    best first) and ``run_id`` (the MLflow parent run). ``data`` and ``teacher`` replace the
    config's dataset and teacher; other keyword arguments are ``SweepOptions``
    (``num_samples``, ``storage``, ``tracking_uri``, ``name``, ``resume``, ``overrides``, ...)."""
    valid = [f.name for f in dataclasses.fields(SweepOptions) if f.name not in ("data", "teacher")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(f"kdsearch.sweep got an unknown option {unknown[0]!r}: valid options are {', '.join(valid)}")
    return run_sweep(space, SweepOptions(**options, data=data, teacher=teacher), log=log)
