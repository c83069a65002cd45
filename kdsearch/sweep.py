"""A sweep from start to finish: load the data and the teacher once, run the trials
(kdsearch.tune), log them (kdsearch.tracking), then test the best student and export it."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdsearch.checkpoint import load_model, save_checkpoint
from kdsearch.compression import compression_report
from kdsearch.data import load_dataset
from kdsearch.data.pipeline import DeviceData
from kdsearch.errors import UserError
from kdsearch.evaluate import evaluate
from kdsearch.methods import Objective
from kdsearch.report import build_report, trial_table
from kdsearch.search_space import SweepSpec, load_sweep

BEST_DIR = "best"


@dataclass
class SweepOptions:
    num_samples: int | None = None
    max_concurrent: int | None = None
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    address: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    name: str | None = None
    resume: bool = False
    smoke: bool = False
    register: bool = True
    teacher_cache: bool = True  # compute the teacher's outputs once for all trials (within the memory budget)
    verbose: int = 1


@dataclass
class SweepSummary:
    name: str
    sweep_dir: str
    out_dir: Path  # local folder with best/ (the sweep folder itself for local storage)
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


def _is_uri(path: str) -> bool:
    return "://" in path


def apply_options(spec: SweepSpec, opts: SweepOptions) -> SweepSpec:
    search = spec.search
    fixed = dict(spec.fixed)
    if opts.num_samples is not None:
        if opts.num_samples < 1:
            raise UserError(f"--num-samples must be at least 1, got {opts.num_samples}")
        if search.sampler == "grid" and opts.num_samples != search.num_samples:
            raise UserError(f"--num-samples {opts.num_samples} but {spec.source} is a grid of {search.num_samples} combinations: drop --num-samples")
        search = dataclasses.replace(search, num_samples=opts.num_samples)
    if opts.smoke:
        # Two short trials: checks the whole path (data, teacher, Ray, MLflow, export) in seconds.
        epochs = min(2, spec.example_config().epochs)
        fixed.update(epochs=epochs, teacher_epochs=min(2, spec.example_config().teacher_epochs))
        if spec.example_config().dataset != "digits":
            fixed["train_subset"] = min(2000, fixed.get("train_subset") or 2000)
        samples = search.num_samples if search.sampler == "grid" else min(search.num_samples, 2)  # a grid is its combinations
        search = dataclasses.replace(search, num_samples=samples, grace_period=1, n_startup_trials=1)
    return dataclasses.replace(spec, fixed=fixed, search=search)


def _cache_teacher_outputs(teacher, data, cfg, log: Callable[[str], None]):
    """The teacher's outputs for every view of every epoch, once, if they fit the budget."""
    import time

    from kdsearch.teacher_cache import budget_bytes, compute_teacher_outputs, estimate_bytes
    from kdsearch.train import resolve_device

    attention = cfg.method == "at"
    size = estimate_bytes(teacher.model, data, cfg.epochs, attention)
    if size > budget_bytes():
        log(f"teacher outputs would take {size / 1e9:.1f} GB, over the budget (KDSEARCH_TEACHER_CACHE_GB): trials run the teacher live")
        return None
    device = resolve_device(cfg.device)
    started = time.perf_counter()
    outputs = compute_teacher_outputs(teacher.model, data, seed=cfg.seed, epochs=cfg.epochs, crop_pad=cfg.crop_pad, flip=cfg.flip,
                                      attention=attention, device=device, amp=device.type == "cuda")  # fmt: skip
    log(f"teacher outputs for {cfg.epochs} epochs x {len(data.train_x)} images computed once for all trials "
        f"({outputs.nbytes() / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s)")  # fmt: skip
    return outputs


def needs_teacher(spec: SweepSpec) -> bool:
    from kdsearch.methods import METHODS

    cfg = spec.example_config()
    if cfg.method == "dml":
        return bool(cfg.method_args.get("use_teacher")) or "use_teacher" in spec.space
    return bool(getattr(METHODS[cfg.method], "needs_teacher", False))


def _test_best(student_path: Path, teacher, data, cfg) -> tuple[dict, object, dict]:
    """Test metrics and compression of the best student; also its model and checkpoint payload."""
    from kdsearch.train import resolve_device

    model, payload = load_model(student_path)
    device = resolve_device(cfg.device)
    model.to(device)
    test = DeviceData(data.test_x, data.test_y, data.mean, data.std, device)
    metrics = {f"test/{k}": v for k, v in evaluate(model, test, cfg.eval_batch_size, data.multilabel, Objective(data.multilabel).hard).items()}
    metrics.update({k: v for k, v in payload["metrics"].items() if k.startswith("val/")})
    teacher_test = teacher.metrics.get("test/acc") if teacher is not None else None
    if teacher is not None:
        metrics.update({f"teacher/{k.replace('/', '_')}": v for k, v in teacher.metrics.items() if k in ("val/acc", "test/acc")})
    metrics.update(compression_report(model, teacher.model if teacher is not None else None, (data.in_channels, *data.image_size),
                                      student_acc=metrics["test/acc"], teacher_acc=teacher_test))  # fmt: skip
    return metrics, model, payload


def _guard_mlflow(step: Callable[[], object], tracking_uri: str, name: str) -> bool:
    """Run an MLflow step; if the server fails, say so (always, on stderr) and how to catch up, but lose nothing."""
    try:
        step()
        return True
    except Exception as exc:  # noqa: BLE001 - any failure of the tracking store
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        print(f"kdsearch: warning: MLflow at {tracking_uri} failed ({first}); every result is in the sweep folder: "
              f"run `kdsearch sync {name}` once it is back", file=sys.stderr, flush=True)  # fmt: skip
        return False


def sync_sweep(folder: Path, tracking_uri: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Push a sweep folder's trials, best student and report to MLflow (after an outage)."""
    from kdsearch import tracking
    from kdsearch.report import read_manifest
    from kdsearch.trials import load_trials

    manifest = read_manifest(folder)
    uri = tracking_uri or manifest["tracking_uri"]
    tracker = tracking.SweepTracker(uri, experiment=manifest["name"], sweep_dir=manifest["sweep_dir"],
                                    tags={k: manifest[k] for k in ("method", "dataset", "teacher", "student")})  # fmt: skip
    tracker.start({})
    trials = load_trials(folder)
    added = tracker.sync(trials)
    student_path = folder / BEST_DIR / "student.pt"
    if student_path.is_file() and (folder / BEST_DIR / "metrics.json").is_file():
        config = yaml.safe_load((folder / BEST_DIR / "config.yaml").read_text())
        metrics = json.loads((folder / BEST_DIR / "metrics.json").read_text())
        tracker.log_best(manifest.get("best_params", {}), config, metrics, student_path)
        if (folder / "report").is_dir():
            tracking.log_report_to_run(tracker.parent_id, uri, sorted(p for p in (folder / "report").iterdir() if p.is_file()))
        tracker.finish()
    return {"trials": len(trials), "epochs_added": added, "parent_run_id": tracker.parent_id, "tracking_uri": uri}


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """``sweep.json``: where the sweep's results and MLflow runs are, for export and report."""
    tmp = out_dir / ".sweep.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(out_dir / "sweep.json")


def resolve_sweep_dir(source: str, storage: str | None = None, tracking_uri: str | None = None) -> Path:
    """A sweep folder from a folder, a sweep name (under --storage, default ./sweeps) or an MLflow run id."""
    candidates = [Path(source), Path(storage or Path.cwd() / "sweeps") / source]
    for folder in candidates:
        if (folder / "sweep.json").is_file():
            return folder
    if re.fullmatch(r"[0-9a-f]{32}", source):
        from kdsearch import tracking

        folder = Path(tracking.sweep_dir_of_run(source, tracking_uri or tracking.default_tracking_uri()))
        if (folder / "sweep.json").is_file():
            return folder
        raise UserError(f"MLflow run {source} belongs to the sweep in {folder}, which is not on this machine: run there, or copy it")
    raise UserError(f"no sweep at {candidates[0]} or {candidates[1]} (no sweep.json), and {source!r} is not an MLflow run id: "
                    "pass a sweep folder, a sweep name or a parent run id")  # fmt: skip


def run_sweep(path: str | Path, opts: SweepOptions, log: Callable[[str], None] = print) -> SweepSummary:
    from kdsearch import tracking, tune
    from kdsearch.teachers import get_teacher, reference_teacher
    from kdsearch.train import resolve_stem, set_threads

    spec = apply_options(load_sweep(path), opts)
    name = opts.name or spec.name
    storage = opts.storage or str(Path.cwd() / "sweeps")
    if not _is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
        try:
            Path(storage).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the sweep storage {storage} ({exc.strerror}): pass a writable --storage") from None
    sweep_dir = f"{storage.rstrip('/')}/{name}"
    out_dir = Path(sweep_dir) if not _is_uri(storage) else Path.cwd() / "sweeps" / name
    base = spec.example_config()
    tracking_uri = opts.tracking_uri or tracking.default_tracking_uri()

    tracker = tracking.SweepTracker(tracking_uri, experiment=name, sweep_dir=sweep_dir,
                                    tags={"method": base.method, "dataset": base.dataset, "teacher": base.teacher, "student": base.student})  # fmt: skip
    params = {k: v for k, v in base.to_dict().items() if k not in spec.space and k != "method_args"}
    params.update({f"method_args.{k}": v for k, v in base.method_args.items() if k not in spec.space})
    params.update({f"space.{k}": json.dumps(v) for k, v in spec.space.items()})
    params.update({"search.sampler": spec.search.sampler, "search.scheduler": spec.search.scheduler, "search.num_samples": spec.search.num_samples,
                   "search.objectives": json.dumps(spec.search.objectives), "search.seed": spec.search.seed})  # fmt: skip
    if opts.resume and not _is_uri(storage) and not Path(sweep_dir).exists():
        raise UserError(f"nothing to resume at {sweep_dir}: run the sweep without --resume first (same --name and --storage)")
    if not opts.resume and not _is_uri(storage) and Path(sweep_dir).exists():
        raise UserError(f"a sweep named {name!r} already exists in {storage}: add --resume to continue it, or pass another --name")
    # MLflow's set-up (a new database's tables take ~1 s to create) runs while Ray starts (~2.3 s
    # here). Loading the data in this thread as well measured slower (10.4 vs 9.7 s to the first
    # trial result, median of 4): it stays below.
    started: dict = {}

    def start_tracking():
        try:
            tracker.start(params)
        except BaseException as exc:  # re-raised in the main thread, below
            started["error"] = exc

    setup_thread = threading.Thread(target=start_tracking, name="kdsearch-mlflow-start", daemon=True)
    setup_thread.start()
    try:
        tune.start_ray(opts.address, quiet=opts.verbose < 2)
    except BaseException:
        setup_thread.join()  # a cluster that cannot be reached: never leave MLflow half set up
        raise
    try:
        setup_thread.join()
        if "error" in started:
            raise started["error"]  # one line, before any trial, if MLflow is unreachable
        manifest = {
            "name": name, "sweep_dir": sweep_dir, "space_file": str(path), "tracking_uri": tracking_uri, "parent_run_id": tracker.parent_id,
            "method": base.method, "dataset": base.dataset, "teacher": base.teacher, "student": base.student, "epochs": base.epochs,
            "space": spec.space, "objectives": [list(o) for o in spec.search.objectives],
        }  # fmt: skip
        out_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(out_dir, manifest)

        set_threads(None)
        data = load_dataset(base.dataset, base.data_dir, base.download, base.val_fraction, base.split_seed, base.image_size, base.train_subset)
        fixed = spec.fixed_config()
        teacher = get_teacher(fixed, data, log=log) if needs_teacher(spec) else None
        teacher_outputs = _cache_teacher_outputs(teacher, data, fixed, log) if teacher is not None and opts.teacher_cache else None
        log(f"sweep {name}: {spec.search.num_samples} trials of {base.method} on {base.dataset} ({base.student} <- {base.teacher}), "
            f"{spec.search.sampler} + {spec.search.scheduler}, results in {sweep_dir}")  # fmt: skip

        trials = tune.run_sweep(spec, data, teacher, storage=storage, name=name, resume=opts.resume, cpus_per_trial=opts.cpus_per_trial,
                                gpus_per_trial=opts.gpus_per_trial, max_concurrent=opts.max_concurrent, tracker=tracker,
                                verbose=opts.verbose, teacher_outputs=teacher_outputs)  # fmt: skip
    finally:
        tune.stop_ray()

    metric, mode = spec.search.metric, spec.search.mode
    ranked = [t for t in trials if t.best_checkpoint and math.isfinite(t.best(metric, mode)) and t.failure is None]
    if not ranked:
        _guard_mlflow(lambda: (tracker.sync(trials), tracker.finish("FAILED")), tracking_uri, name)
        reasons = "; ".join(f"{t.trial_id}: {t.failure or 'no result'}" for t in trials[:3])
        raise UserError(f"no trial of sweep {name!r} produced a checkpoint ({reasons}); see {sweep_dir}")
    best = max(ranked, key=lambda t: t.best(metric, mode) * (1 if mode == "max" else -1))
    best_cfg = dataclasses.replace(spec.trial_config(dict(best.params)).resolved(), threads=None)

    # Everything the sweep produced is written locally first; MLflow only mirrors it.
    best_dir = out_dir / BEST_DIR
    student_path = tune.copy_from_checkpoint(best.best_checkpoint, tune.STUDENT_FILE, best_dir / "student.pt")
    if teacher is None:
        teacher = reference_teacher(fixed, data, resolve_stem(fixed.stem, data.image_size))
    metrics, model, trial_payload = _test_best(student_path, teacher, data, best_cfg)
    # Rewritten so the checkpoint carries its test and compression metrics.
    save_checkpoint(student_path, model, trial_payload["model"], dataset=trial_payload["dataset"], metrics=metrics,
                    config=best_cfg.to_dict(), sweep={"name": name, "trial": best.trial_id, "params": best.params})  # fmt: skip
    (best_dir / "config.yaml").write_text(yaml.safe_dump(best_cfg.to_dict(), sort_keys=False))
    (best_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    table = trial_table(trials, manifest)
    write_manifest(out_dir, {**manifest, "best_trial": best.trial_id, "best_params": best.params, "best_metrics": metrics})
    report = build_report(out_dir) if not _is_uri(storage) else None  # the report reads the trial logs in the sweep folder

    def mirror():
        tracker.sync(trials)
        tracker.log_best(best.params, best_cfg.to_dict(), metrics, student_path, model=model if opts.register else None,
                         input_shape=(data.in_channels, *data.image_size), registered_name=f"{name}-student")  # fmt: skip
        if report is not None:
            tracking.log_report_to_run(tracker.parent_id, tracking_uri, report["files"])
        tracker.finish()

    synced = _guard_mlflow(mirror, tracking_uri, name)
    failures = [(t.trial_id, t.failure) for t in trials if t.failure is not None]
    return SweepSummary(name, sweep_dir, out_dir, table, dict(best.params), best_cfg.to_dict(), metrics, student_path,
                        tracking_uri, tracker.parent_id, manifest["objectives"], failures, synced)  # fmt: skip
