"""A trial as Ray Tune runs it (``EpochTrainable``) and what it receives from the driver: the
data and the teacher through Ray's object store, the students' size metrics measured once."""

from __future__ import annotations

import dataclasses
import gc
import io
import itertools
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune

from kdsearch.data import DatasetSplits
from kdsearch.data.placement import mapped_file, open_mapped
from kdsearch.errors import UserError
from kdsearch.models.checkpoint import TRIAL_STATE, TRIAL_STUDENT, build_from_spec, student_from_state
from kdsearch.models.compression import compression_report
from kdsearch.runtime.device import gpu_memory_mb, resolve_device, set_threads
from kdsearch.search.record import score_so_far, searched
from kdsearch.search.space import SweepSpec
from kdsearch.teacher.weights import Teacher
from kdsearch.training.engine import EpochState, TrainingDiverged, build_run, restore, run_epoch, student_spec

STATE_FILE = TRIAL_STATE  # full training state, to resume the trial, and the best student so far
STUDENT_FILE = TRIAL_STUDENT  # the student alone, a kdsearch checkpoint: at the trial's end (checkpoint.trial_student)
SCORE = "trial/score"  # reported every epoch: the trial's score so far (search.record)
# Marks the last result of a trial restored from its end checkpoint, reported again without training
# (ray_internals.ResultLog and the MLflow forwarding leave it out: the trial logged it the first time).
REPLAYED = "trial/replayed"


def payload(data: DatasetSplits) -> dict:
    """What trials get of the data: numpy arrays, which Ray's object store hands to every worker
    of a node without a copy; no test images (trials select on validation; the driver tests)."""

    out = {k: getattr(data, k) for k in ("name", "class_names", "multilabel", "mean", "std", "split")}
    for k in ("train_x", "train_y", "val_x", "val_y"):  # streamed data: the files, each trial maps them
        path = mapped_file(getattr(data, k))
        out[k] = {"mapped": path} if path else getattr(data, k).numpy()
    out.update(test_x=data.test_x[:0].numpy(), test_y=data.test_y[:0].numpy())
    return out


def unpack(payload: dict) -> DatasetSplits:

    with warnings.catch_warnings():  # read-only views of the object store: training only reads them
        warnings.simplefilter("ignore", UserWarning)
        values = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in payload.items()}
        for k, v in payload.items():
            if isinstance(v, dict) and "mapped" in v:
                values[k] = open_mapped(v["mapped"])
    return DatasetSplits(**values)


def teacher_payload(teacher: Teacher) -> dict:
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


def unpack_teacher(t: dict) -> Teacher:
    if "state_dict" in t:
        model = build_from_spec(t["spec"])
        model.load_state_dict(t["state_dict"])
    elif "torchscript" in t:
        model = torch.jit.load(io.BytesIO(t["torchscript"]), map_location="cpu")
    else:
        model = t["module"]
    return Teacher(model, t["arch"], t["metrics"], None, t["spec"])


def static_metrics(architecture: dict, data: DatasetSplits, needs_latency: bool) -> dict:
    """Size metrics of the student architecture (constant over training), reported each epoch
    so that Optuna can optimise them alongside accuracy."""
    report = compression_report(
        build_from_spec(architecture), None, (data.in_channels, *data.image_size), measure_speed=needs_latency
    )
    return {k: v for k, v in report.items() if k in ("student/params", "student/flops", "student/size_mb", "latency/cpu_ms")}


_ARCHITECTURE_KEYS = ("student", "student_width", "student_args", "stem")


def architecture_metrics(spec: SweepSpec, data: DatasetSplits) -> dict[str, dict]:
    """Size metrics and batch-1 CPU latency of every student architecture the
    space can draw, measured once in the driver before any trial trains: a latency timed inside
    a trial shares the cores with the other trials and differs for the same architecture. A
    space that draws the architecture from a continuous range gets {} (trials measure it)."""
    choices = {}
    for key in _ARCHITECTURE_KEYS:
        dist = spec.space.get(key)
        if dist is not None and dist["kind"] != "choice":
            return {}
        choices[key] = dist["args"] if dist is not None else [None]
    first = {key: dist["args"][0] for key, dist in spec.space.items()}
    out = {}
    for combo in itertools.product(*choices.values()):
        drawn = {k: v for k, v in zip(_ARCHITECTURE_KEYS, combo) if v is not None}
        student = student_spec(spec.trial_config({**first, **drawn}), data)
        key = json.dumps(student, sort_keys=True)
        if key not in out:
            out[key] = static_metrics(student, data, needs_latency=True)
    return out


class EpochTrainable(tune.Trainable):
    """A trial: one epoch per ``step()``, run in the actor's main thread (a function trainable
    runs in a thread beside Tune's own, and trains slower: benchmarks/results/speed-cpu.md).
    Tune checkpoints it at ASHA's rungs, every ``checkpoint_every`` epochs and at its end, and
    restores the last checkpoint on a retry or ``--resume``; a reused actor is reset for the next trial."""

    def setup(self, config: dict, **shared) -> None:
        self.shared = (
            shared  # spec, data_payload, teacher_payload, threads, teacher_outputs, static_by_architecture, gpu_share, placement
        )
        # What this worker holds before its first trial (Ray, torch, kdsearch) stays for the
        # actor's life: kept out of the garbage collector, the full collection between trials
        # (release) and the automatic ones do not walk it (benchmarks/results/many-trials-gc.md).
        gc.freeze()
        self.start_trial(config)

    def start_trial(self, sampled: dict) -> None:
        shared = self.shared
        spec: SweepSpec = shared["spec"]
        self.spec, self.run, self.failed = spec, None, None
        self.data = unpack(shared["data_payload"])
        cfg = dataclasses.replace(spec.trial_config(searched(sampled)), threads=shared["threads"])
        gpus = ray.get_gpu_ids()
        if not gpus and cfg.device == "auto":
            cfg = dataclasses.replace(cfg, device="cpu")  # no GPU of its own: never another trial's
        if gpus and shared["gpu_share"] < 1 and torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(shared["gpu_share"])  # a fractional trial keeps to its share
        self.cfg, self.epoch, self.best_val = cfg, 0, -math.inf
        self.last_metrics: dict = {}  # the last epoch's result
        self.score: float | None = None  # the best value of the first objective so far (SCORE)
        # The student at its best epoch so far (ties: the later) and that epoch's metrics: a trial
        # checkpoints only at ASHA's rungs and its end, and each checkpoint's student is this one.
        self.best_student: tuple[dict, dict] | None = None
        self.best_epoch = 0  # the epoch of best_student (epochs done then)
        self.checkpoint_epochs = spec.search.checkpoint_epochs(int(cfg.epochs or 0))
        try:
            self.device = resolve_device(cfg.device)
        except UserError:
            self.device = torch.device("cpu")  # build_run below reports the bad device in its one line
        # What the GPU holds before this trial builds anything: a reused actor's next trial must
        # start where the first did (nothing of the last trial kept), benchmarks/gpu.py reads it.
        start = gpu_memory_mb(self.device, reset_peak=True)
        self.own_spec = student_spec(cfg, self.data)
        static = dict((shared["static_by_architecture"] or {}).get(json.dumps(self.own_spec, sort_keys=True)) or {})
        if not static:  # an architecture drawn from a continuous range: measured here, beside the other trials
            static = static_metrics(self.own_spec, self.data, needs_latency=True)
        static["trial/node"] = ray.get_runtime_context().get_node_id()  # which cluster node ran this epoch
        static["trial/gpu_ids"] = ",".join(str(g) for g in gpus)  # the GPUs Ray gave it ("" for none)
        if start:
            static["gpu/allocated_at_start_mb"] = start["gpu/allocated_mb"]
        self.static = static
        teacher = unpack_teacher(shared["teacher_payload"]) if shared["teacher_payload"] is not None else None
        set_threads(cfg.threads)
        try:
            self.run = build_run(
                cfg, self.data, teacher, shared["teacher_outputs"], lambda line: None, placement=shared.get("placement")
            )
        except UserError as exc:
            self.failed = exc  # reported by the first step
        if self.run is not None and self.run.teacher_live is not None:  # the sweep's shared outputs do not serve this trial
            static["trial/teacher_live"] = self.run.teacher_live

    def step(self) -> dict:
        if self.failed is None and self.epoch >= self.cfg.epochs and self.last_metrics:
            # Restored from its end checkpoint (a retry after the trial's last save, or a resume whose
            # experiment state had not recorded the end yet): nothing is left to train.
            return {**self.last_metrics, REPLAYED: 1.0, "done": True}
        if self.failed is None:
            try:
                metrics, self.best_val = run_epoch(self.run, self.data, self.epoch, self.best_val)
                self.epoch += 1
                memory = {k: v for k, v in gpu_memory_mb(self.device).items() if k == "gpu/peak_mb"}
                self.last_metrics = {**metrics, **self.static, **memory}
                self.last_metrics[SCORE] = self.score = score_so_far(self.score, self.last_metrics, self.spec.search.objective)
                if self.last_metrics.get(self.spec.search.metric) == self.score:  # the best epoch so far
                    weights = {k: v.detach().to("cpu", copy=True) for k, v in self.run.student.state_dict().items()}
                    self.best_student = (
                        weights,
                        {k: v for k, v in self.last_metrics.items() if k.startswith(("val/", "train/"))},
                    )
                    self.best_epoch = self.epoch
                done = self.epoch >= self.cfg.epochs
                return {**self.last_metrics, "done": done, "should_checkpoint": not done and self.epoch in self.checkpoint_epochs}
            except (TrainingDiverged, UserError) as exc:
                self.failed = exc
        # Retrying the same settings would fail the same way (a divergence, or a setting that
        # cannot work, such as AT weights for stages the models do not have): end the trial now
        # with the worst score, so the searcher avoids this region, and keep the reason.
        worst = {o.metric: o.failed_value for o in self.spec.search.objectives}
        kind = "trial/diverged" if isinstance(self.failed, TrainingDiverged) else "trial/invalid"
        return {**self.static, **worst, kind: 1.0, "trial/error": str(self.failed), "done": True}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        if self.run is None or self.failed is not None:
            return  # nothing worth keeping: the best checkpoint stays an earlier epoch's
        run = self.run
        state = EpochState(self.epoch, self.best_val, run.student, run.method, run.optimizer, run.scheduler).training_state()
        weights, metrics = self.best_student or (None, {})
        # The best student so far rides in the state (its weights only when they are not the
        # state's own student's), with what its student file says; that file is written once,
        # at the trial's end: a trial ASHA stops gets it when something reads its checkpoint.
        state["best"] = {
            "student": None if weights is None or self.best_epoch == self.epoch else weights,
            "model": self.own_spec, "dataset": self.data.info(), "metrics": metrics, "config": self.cfg.to_dict(),
            "score": self.score,
        }  # fmt: skip
        state["last"] = self.last_metrics  # the last epoch's result, reported again if restored at the end
        folder = Path(checkpoint_dir)
        # Plain writes: Tune copies the folder to the sweep's storage as soon as this returns, then deletes it.
        torch.save(state, folder / STATE_FILE)
        if self.epoch >= self.cfg.epochs:
            student_from_state(state, folder / STUDENT_FILE)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        state_file = Path(checkpoint_dir) / STATE_FILE
        if self.run is not None and state_file.is_file():
            state = torch.load(state_file, map_location="cpu", weights_only=True)
            self.epoch, self.best_val = restore(self.run, state)
            self.last_metrics = dict(state.get("last") or {})
            best = state.get("best")
            if best is not None:  # the best student so far, and the score, carry over the resume
                weights = state["student"] if best["student"] is None else best["student"]
                self.best_student, self.score = (weights, best["metrics"]), best["score"]
                self.best_epoch = self.epoch if best["student"] is None else 0

    def reset_config(self, new_config: dict) -> bool:
        self.release()
        self.start_trial(new_config)
        return True

    def cleanup(self) -> None:
        self.release()

    def release(self) -> None:
        # A reused actor runs the next trial: nothing of this one may stay (GPU memory, graphs).
        if self.run is not None:
            for tap in self.run.taps:
                tap.close()
        self.run = self.data = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if "torch._dynamo" in sys.modules:  # only a compiled run has graphs to drop (importing Dynamo takes ~2 s)
            torch.compiler.reset()
