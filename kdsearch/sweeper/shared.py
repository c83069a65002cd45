"""What every trial of a sweep shares, prepared once in the driver: the data, the teacher and
the teacher's outputs for every epoch (when they fit the budget)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdsearch import ray_trials
from kdsearch.data import load_data
from kdsearch.data.placement import host_bytes
from kdsearch.methods import method_class
from kdsearch.methods.base import Reads, reads_of
from kdsearch.models.checkpoint import save_checkpoint
from kdsearch.runtime.device import resolve_device, set_threads
from kdsearch.runtime.provenance import provenance
from kdsearch.search.folder import MANIFEST
from kdsearch.search.options import SweepOptions
from kdsearch.search.space import SweepSpec
from kdsearch.settings.distributions import PARAM
from kdsearch.sweeper.plan import SweepPlan
from kdsearch.sweeper.storage_guard import StorageGuard
from kdsearch.teacher.outputs import CacheLimits, compute_shared_outputs, teacher_and_outputs
from kdsearch.teacher.weights import Teacher, given_teacher


def sweep_reads(spec: SweepSpec) -> Reads:
    """What any trial's method may read (``Method.reads``): of every method the sweep may train
    with, with its fixed settings and with each choice the space offers for one of them (DML's
    use_teacher: [true, false]). The shared teacher outputs are made to serve all of it."""
    found = []
    for method in spec.methods:
        cfg, cls = spec.example_config(method), method_class(method)
        found.append(cls.reads_for(cfg.method_args))
        for entry in spec.templates.values():
            dist = spec.space.get((entry["template"] or {}).get(PARAM)) if isinstance(entry["template"], dict) else None
            if entry["method"] in (None, method) and dist is not None and dist["kind"] == "choice":
                found += [cls.reads_for({**cfg.method_args, entry["name"]: value}) for value in dist["args"]]
    return reads_of(found)


@dataclass
class SweepInputs:
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


def prepare_shared(plan: SweepPlan, tracker, opts: SweepOptions, log: Callable[[str], None]) -> SweepInputs:

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
    fixed = spec.fixed_config()
    trials = ray_trials.sweep_trials_at_once(spec, opts)
    limits = CacheLimits(
        copies=2,  # the driver's, and the one its trials share (Ray's object store)
        reserved=host_bytes(placement, data, int(fixed.crop_pad or 0), trials, resolve_device(fixed.device).type),
        disk=opts.shared_storage or ray_trials.node_count() == 1,  # outputs on disk: every node must see the files
    )
    reads = sweep_reads(spec)
    if opts.teacher is not None:
        teacher = given_teacher(opts.teacher, fixed, data)
        outputs = compute_shared_outputs(teacher, data, fixed, log, limits, reads) if opts.teacher_cache else None
    elif not reads.needs_teacher:
        teacher, outputs = None, None
    elif ray_trials.gpu_elsewhere(fixed.device):
        # A head node without a GPU: train (or load) the teacher and compute its outputs on a
        # cluster GPU, not on the driver's CPU while the GPUs idle.
        elsewhere = dataclasses.replace(limits, disk=False)  # the files would be on the GPU node's disk, not the trials'
        teacher, outputs, node = ray_trials.run_on_a_gpu(
            teacher_and_outputs, fixed, data, opts.teacher_cache, lambda _: None, elsewhere, reads
        )
        keep_local_copy(teacher, data)
        log(f"teacher {teacher.arch} and its outputs prepared on GPU node {node[:8]} (this driver has no GPU)")
    else:
        teacher, outputs = teacher_and_outputs(fixed, data, opts.teacher_cache, log, limits, reads)
    log(
        f"sweep {plan.name}: {spec.search.num_samples} trials of {base.method} on {base.dataset} ({base.student} <- {base.teacher}), "
        f"{spec.search.sampler} + {spec.search.scheduler}, results in {plan.sweep_dir}"
    )
    return SweepInputs(data, teacher, outputs, manifest, guard, placement)


def keep_local_copy(teacher: Teacher, data) -> None:
    """A teacher trained on another node was cached on that node's disk: cache it here too, so
    that best/config.yaml's teacher_checkpoint exists where the sweep's results are."""
    if teacher.path is not None and not Path(teacher.path).is_file() and teacher.spec is not None:
        save_checkpoint(teacher.path, teacher.model, teacher.spec, dataset=data.info(), metrics=teacher.metrics)
