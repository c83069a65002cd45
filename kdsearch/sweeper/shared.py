"""What every trial of a sweep shares, prepared once in the driver: the data, the teacher and
the teacher's outputs for every epoch (when they fit the budget)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdsearch.data import load_data
from kdsearch.data.placement import host_bytes
from kdsearch.methods import method_class
from kdsearch.models.checkpoint import save_checkpoint
from kdsearch.runtime.device import resolve_device, set_threads
from kdsearch.runtime.provenance import provenance
from kdsearch.search.folder import MANIFEST
from kdsearch.search.options import SweepOptions
from kdsearch.search.space import SweepSpec
from kdsearch.settings.distributions import PARAM
from kdsearch.sweeper.plan import SweepPlan
from kdsearch.sweeper.storage_guard import StorageGuard
from kdsearch.teacher.weights import Teacher, get_teacher, given_teacher


def needs_teacher(spec: SweepSpec) -> bool:
    """Whether any trial's method will need the teacher: any method the sweep may train with,
    with its fixed settings or any choice the space offers for one (DML's use_teacher: [true, false])."""
    for method in spec.methods:
        cfg, cls = spec.example_config(method), method_class(method)
        if cls.uses_teacher(cfg.method_args):
            return True
        for entry in spec.templates.values():
            dist = spec.space.get((entry["template"] or {}).get(PARAM)) if isinstance(entry["template"], dict) else None
            if entry["method"] in (None, method) and dist is not None and dist["kind"] == "choice":
                if any(cls.uses_teacher({**cfg.method_args, entry["name"]: value}) for value in dist["args"]):
                    return True
    return False


def needs_attention(spec: SweepSpec) -> bool:
    """Whether any method the sweep may train with reads the teacher's attention maps."""
    return any(method_class(method).needs_attention for method in spec.methods)


def compute_shared_outputs(
    teacher: Teacher,
    data,
    cfg,
    log: Callable[[str], None],
    attention: bool | None = None,
    copies: int = 1,
    disk: bool = True,
    reserved: int = 0,
):
    """The teacher's outputs for every view of every epoch, once; with its attention maps when
    ``attention`` (default: when ``cfg.method`` reads them). In memory when they fit the budget
    for ``copies`` held at once beside the ``reserved`` bytes of the data's placement; else, with ``disk``, written to
    the cache folder and memory-mapped (every trial of a node reads the same files); else None
    (trials run the teacher live). Each way is said in one line."""
    from kdsearch.data.placement import gb
    from kdsearch.teacher.outputs import budget_bytes, compute_teacher_outputs, estimate_bytes, read_written
    from kdsearch.training.engine import teacher_feature_names

    attention = method_class(cfg.method).needs_attention if attention is None else attention
    names = teacher_feature_names(cfg, teacher) if attention else None
    size = estimate_bytes(teacher.model, data, cfg.epochs, attention, names)
    budget = budget_bytes(copies, reserved)
    device = resolve_device(cfg.device)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"  # the trials' precision, checked by mismatch()
    views = dict(
        seed=cfg.seed, epochs=cfg.epochs, crop_pad=cfg.crop_pad, flip=cfg.flip, attention=attention, amp=amp, names=names
    )
    folder = None
    if size > budget:
        beside = f", beside the data's {gb(reserved)}" if reserved else ""
        memory = (
            f"over the {gb(budget)} they may take in memory ({copies} copies at once{beside}; KDSEARCH_TEACHER_CACHE_GB sets it)"
        )
        folder = _disk_folder(cfg, data, teacher, views, size, memory, disk, log)
        if folder is None:
            return None
        written = read_written(folder)
        if written is not None:
            log(
                f"teacher outputs for {cfg.epochs} epochs x {len(data.train_x)} images ({gb(size)}, {memory}): read from {folder}"
            )
            return written
    started = time.perf_counter()
    outputs = compute_teacher_outputs(
        teacher.model, data, device=device, names=names, folder=folder, **{k: v for k, v in views.items() if k != "names"}
    )
    where = (
        f"{gb(outputs.nbytes())}, {memory}: written to {folder}, memory-mapped by every trial (one copy per node)"
        if folder is not None
        else f"{gb(outputs.nbytes())} in memory"
    )
    log(
        f"teacher outputs for {cfg.epochs} epochs x {len(data.train_x)} images computed once for all trials "
        f"({where}, {time.perf_counter() - started:.1f} s)"
    )
    return outputs


def _disk_folder(cfg, data, teacher: Teacher, views: dict, size: int, memory: str, disk: bool, log) -> Path | None:
    """Where outputs over their memory budget are written, or None (said: the trials run the
    teacher live) where the disk has no room or ``disk`` is False (prepared on another node, or
    a cluster without a folder every node mounts)."""
    from kdsearch.data.placement import HEADROOM, cache_folder, existing_folder, gb
    from kdsearch.teacher.outputs import written_folder

    root = cache_folder(cfg)
    room = int(shutil.disk_usage(existing_folder(root)).free * HEADROOM)
    if disk and size <= room:
        return written_folder(root, data, teacher.model, **views)
    where = f"and over the {gb(room)} free for them under {root}" if disk else "and not on a disk every node shares"
    log(f"teacher outputs would take {gb(size)}, {memory} {where}: trials run the teacher live")
    return None


@dataclass
class Shared:
    """What every trial shares, prepared once in the driver."""

    data: object  # DatasetSplits
    teacher: Teacher | None
    teacher_outputs: object | None
    manifest: dict
    guard: StorageGuard | None  # local storage only
    placement: str | None = None  # where the training data lives (data.placement), chosen before the teacher trains


def _manifest(plan: SweepPlan, tracker) -> dict:
    """What the sweep folder's sweep.json says of the sweep before any trial runs."""
    spec = plan.spec
    base = spec.example_config()
    return {
        "name": plan.name,
        "sweep_dir": plan.sweep_dir,
        "space_file": plan.space_file,
        "tracking_uri": plan.tracking_uri,
        "parent_run_id": tracker.parent_id,
        "method": ",".join(spec.methods),
        "dataset": base.dataset,
        "teacher": base.teacher,
        "student": base.student,
        "epochs": base.epochs,
        "space": spec.space,
        "objectives": [list(o) for o in spec.search.objectives],
        "overrides": plan.overrides,
        "provenance": provenance(),
    }


def prepare_shared(plan: SweepPlan, tracker, opts: SweepOptions, log: Callable[[str], None]) -> Shared:
    from kdsearch import ray_trials

    spec = plan.spec
    base = spec.example_config()
    manifest = _manifest(plan, tracker)
    set_threads(None)
    data = opts.data if opts.data is not None else load_data(base)
    guard = StorageGuard(plan.storage, plan.sweep_dir, plan.spec, data) if plan.local else None
    if guard is not None:
        guard.check_room()
    plan.folder.write_manifest(manifest)
    plan.folder.publish([plan.folder.path / MANIFEST])
    if guard is not None:
        guard.place()
    placement, data = ray_trials.place_data(spec, data, opts, log)
    copies = 2  # of the teacher's outputs in memory: the driver's, and the one its trials share (Ray's object store)
    disk = opts.shared_storage or ray_trials.node_count() == 1  # outputs written to disk: every node must see the files
    fixed = spec.fixed_config()
    trials = ray_trials.sweep_trials_at_once(spec, opts)
    reserved = host_bytes(placement, data, int(fixed.crop_pad or 0), trials, resolve_device(fixed.device).type)
    if opts.teacher is not None:
        teacher = given_teacher(opts.teacher, fixed, data)
        outputs = (
            compute_shared_outputs(teacher, data, fixed, log, needs_attention(spec), copies, disk, reserved)
            if opts.teacher_cache
            else None
        )
    elif not needs_teacher(spec):
        teacher, outputs = None, None
    elif ray_trials.gpu_elsewhere(fixed.device):
        # A head node without a GPU: train (or load) the teacher and compute its outputs on a
        # cluster GPU, not on the driver's CPU while the GPUs idle.
        teacher, outputs, node = ray_trials.run_on_a_gpu(
            teacher_and_outputs, fixed, data, opts.teacher_cache, lambda _: None, needs_attention(spec), copies, False, reserved
        )
        keep_local_copy(teacher, data)
        log(f"teacher {teacher.arch} and its outputs prepared on GPU node {node[:8]} (this driver has no GPU)")
    else:
        teacher, outputs = teacher_and_outputs(
            fixed, data, opts.teacher_cache, log, needs_attention(spec), copies, disk, reserved
        )
    log(
        f"sweep {plan.name}: {spec.search.num_samples} trials of {base.method} on {base.dataset} ({base.student} <- {base.teacher}), "
        f"{spec.search.sampler} + {spec.search.scheduler}, results in {plan.sweep_dir}"
    )
    return Shared(data, teacher, outputs, manifest, guard, placement)


def teacher_and_outputs(
    cfg,
    data,
    cache_outputs: bool,
    log: Callable[[str], None] = lambda _: None,
    attention: bool | None = None,
    copies: int = 1,
    disk: bool = True,
    reserved: int = 0,
):
    """The sweep's teacher and its outputs for every view (``compute_shared_outputs``; the model
    moved to the CPU). ``disk``: False where this runs on another node than the trials' driver."""
    teacher = get_teacher(cfg, data, log=log)
    outputs = compute_shared_outputs(teacher, data, cfg, log, attention, copies, disk, reserved) if cache_outputs else None
    teacher.model.cpu()
    return teacher, outputs


def keep_local_copy(teacher: Teacher, data) -> None:
    """A teacher trained on another node was cached on that node's disk: cache it here too, so
    that best/config.yaml's teacher_checkpoint exists where the sweep's results are."""
    if teacher.path is not None and not Path(teacher.path).is_file() and teacher.spec is not None:
        save_checkpoint(teacher.path, teacher.model, teacher.spec, dataset=data.info(), metrics=teacher.metrics)
