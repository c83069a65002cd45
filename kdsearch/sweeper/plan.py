"""Planning a sweep before anything runs: its options, where it runs and logs, and the checks
that stop it in one line (a name taken, nothing to resume, a lock held)."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from kdsearch.errors import UserError
from kdsearch.models.imported import import_models, module_file
from kdsearch.runtime import object_storage
from kdsearch.search.folder import SweepFolder, SweepLock
from kdsearch.search.options import SweepOptions
from kdsearch.search.space import SweepSpec, check_sweep_name, load_sweep
from kdsearch.tracking.uri import default_tracking_uri


def user_code(spec: SweepSpec) -> list[str]:
    """The files and folders of the user's own models and method (import paths) that are not
    installed: sent to every Ray worker (``py_modules`` of the Ray a sweep starts, on this machine
    or a cluster's nodes; on a Ray the caller started, an archive with the trials)."""

    base = spec.example_config()
    names = {base.student, base.teacher, *spec.methods}
    for key in ("student", "teacher"):
        dist = spec.space.get(key)
        if dist is not None and dist["kind"] == "choice":
            names.update(dist["args"])
    own = import_models(names)  # a name that cannot be imported: one line, before any trial starts
    paths = {module_file(n) for n in own}
    return sorted(str(p) for p in paths if p is not None)


def apply_options(spec: SweepSpec, opts: SweepOptions) -> SweepSpec:
    search = spec.search
    fixed = dict(spec.fixed)
    if opts.num_samples is not None:
        if opts.num_samples < 1:
            raise UserError(f"--num-samples must be at least 1, got {opts.num_samples}")
        if search.sampler == "grid" and opts.num_samples != search.num_samples:
            raise UserError(
                f"--num-samples {opts.num_samples} but {spec.source} is a grid of {search.num_samples} combinations: drop --num-samples"
            )
        search = dataclasses.replace(search, num_samples=opts.num_samples)
    if opts.smoke:
        # Two short trials: checks the whole path (data, teacher, Ray, MLflow, export) in a minute
        # or two, long enough that a working set-up learns (smoke_check says whether it did).
        example = spec.example_config()
        fixed.update(epochs=min(3, example.epochs), teacher_epochs=min(5, example.teacher_epochs))
        if spec.example_config().dataset != "digits":
            fixed["train_subset"] = min(2000, fixed.get("train_subset") or 2000)
        samples = search.num_samples if search.sampler == "grid" else min(search.num_samples, 2)  # a grid is its combinations
        search = dataclasses.replace(search, num_samples=samples, grace_period=1, n_startup_trials=1)
    return dataclasses.replace(spec, fixed=fixed, search=search)


@dataclass
class SweepPlan:
    """Where a sweep runs and what it logs, decided before anything starts."""

    spec: SweepSpec
    space_file: str
    name: str
    storage: str  # an absolute folder or a URI Ray understands
    sweep_dir: str  # storage/name
    folder: SweepFolder  # the local folder with sweep.json and best/ (the sweep folder itself for local storage)
    tracking_uri: str
    overrides: dict  # fixed settings given on the command line
    lock: SweepLock  # held from planning to the end of the sweep
    user_code: list[str]  # the user's model modules, imported while planning, sent to the Ray workers

    @property
    def local(self) -> bool:
        return not object_storage.is_uri(self.storage)


def plan_sweep(path: str | Path, opts: SweepOptions) -> SweepPlan:
    overrides = dict(opts.overrides or {})
    if "data_dir" in overrides and overrides["data_dir"] is not None:
        overrides["data_dir"] = str(Path(str(overrides["data_dir"])).expanduser().resolve())  # the same data from any folder
    name = check_sweep_name(opts.name) if opts.name is not None else load_sweep(path, overrides).name
    storage = opts.storage or str(Path.cwd() / "sweeps")
    if not object_storage.is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
        try:
            Path(storage).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the sweep storage {storage} ({exc.strerror}): pass a writable --storage") from None
    sweep_dir = f"{storage.rstrip('/')}/{name}"
    if object_storage.is_uri(storage):
        object_storage.check_writable(storage)  # a bucket that is down or missing: one line, before anything trains
        folder = SweepFolder(object_storage.mirror_dir(sweep_dir), sweep_dir)
    else:
        folder = SweepFolder(Path(sweep_dir))
    lock = SweepLock(folder.path.parent / f".{name}.lock").acquire(name)
    try:
        return _check_plan(path, opts, name, storage, sweep_dir, folder, overrides=overrides, lock=lock)
    except BaseException:
        lock.release()
        raise


def _check_plan(path, opts: SweepOptions, name, storage, sweep_dir, folder, *, overrides, lock) -> SweepPlan:

    if opts.resume and folder.uri is not None and object_storage.exists(sweep_dir):
        object_storage.pull(sweep_dir)
    if opts.resume and folder.exists():
        recorded = folder.read_manifest().get("overrides") or {}
        if overrides and overrides != recorded:
            raise UserError(
                f"--resume with other settings than the sweep started with ({recorded or 'none'}): "
                "drop --set/--data-dir to continue with the recorded ones"
            )
        overrides = recorded

    spec = apply_options(load_sweep(path, overrides), opts)
    plan = SweepPlan(
        spec,
        "(given in Python)" if isinstance(path, dict) else str(path),
        name,
        storage,
        sweep_dir,
        folder,
        opts.tracking_uri or default_tracking_uri(),
        overrides,
        lock,
        user_code(spec),  # the user's models import here, or the sweep stops now with one line
    )
    there = Path(sweep_dir).exists() if plan.local else object_storage.exists(sweep_dir)
    if opts.resume and not there:
        raise UserError(f"nothing to resume at {sweep_dir}: run the sweep without --resume first (same --name and --storage)")
    if not opts.resume and there:
        raise UserError(
            f"a sweep named {name!r} already exists in {storage}: add --resume to continue it, or pass another --name"
        )
    if not plan.local and not opts.resume:
        shutil.rmtree(folder.path, ignore_errors=True)  # a mirror left by an earlier sweep at this URI
    return plan


def resume_command(plan: SweepPlan, opts: SweepOptions) -> str:
    parts = ["kdsearch sweep", plan.space_file, "--resume"]
    if opts.name:
        parts += ["--name", opts.name]
    if opts.storage:
        parts += ["--storage", opts.storage]
    if opts.tracking_uri:
        parts += ["--tracking-uri", opts.tracking_uri]
    return " ".join(parts)
