"""The training engine: one teacher-guided student run, in plain PyTorch.

It imports neither Ray, MLflow nor the command line, and it fetches nothing: the caller
passes the data and, when the method needs one, the teacher (``kdsearch.api.fit`` does
that for a config alone). ``fit`` reads as the algorithm: build, then an epoch of training
and a validation pass per epoch, then the final metrics.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdsearch.config import TrainConfig
from kdsearch.data import DatasetSplits
from kdsearch.data.pipeline import DeviceData, split_for, split_of
from kdsearch.data.placement import place
from kdsearch.errors import UserError
from kdsearch.methods import Method, Outputs, TaskLoss, build_method
from kdsearch.models.checkpoint import build_from_spec, model_spec, save_checkpoint
from kdsearch.models.compression import compression_report
from kdsearch.models.imported import head_name
from kdsearch.models.taps import Forward
from kdsearch.runtime import interrupts
from kdsearch.runtime.device import resolve_device, resolve_stem, set_threads
from kdsearch.runtime.provenance import provenance
from kdsearch.settings import schedules
from kdsearch.training.evaluate import evaluate
from kdsearch.training import method_inputs
from kdsearch.training.method_inputs import live_teacher, teacher_feature_names


@dataclass
class EpochState:
    """What ``on_epoch_end`` sees: the student, and everything needed to resume training."""

    epoch: int
    best_val: float
    student: nn.Module
    method: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object

    def training_state(self) -> dict:
        """A snapshot of plain state dicts (loadable with weights_only=True) for ``train_student(resume=...)``."""
        return copy.deepcopy(
            {
                "epoch": self.epoch,
                "best_val": self.best_val,
                "student": self.student.state_dict(),
                "method": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
            }
        )


EpochCallback = Callable[[dict, EpochState], None]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    config: TrainConfig
    student: nn.Module
    spec: dict
    data_info: dict
    metrics: dict
    history: list[dict] = field(default_factory=list)
    verify: dict | None = None  # DatasetSplits.verify_sample(): exports are checked against it

    def save(self, path: str | Path) -> Path:

        return save_checkpoint(
            path,
            self.student,
            self.spec,
            dataset=self.data_info,
            metrics=self.metrics,
            config=self.config.to_dict(),
            verify=self.verify,
            provenance=provenance(),
        )


@dataclass
class TrainingRun:
    """Everything ``fit`` builds before its first epoch."""

    cfg: TrainConfig
    device: torch.device
    amp: bool
    spec: dict
    student: nn.Module
    method: Method
    train: DeviceData
    val: DeviceData
    optimizer: torch.optim.Optimizer
    scheduler: object
    student_forward: Callable
    teacher_forward: Callable | None  # None: no teacher, or its outputs are looked up
    teacher_outputs: object | None  # kdsearch.teacher.outputs.TeacherOutputs (host memory)
    taps: list[Forward]  # the feature readers behind the forwards, closed when training ends
    moving: dict  # the method's settings that follow a schedule (kdsearch.settings.schedules), as written
    teacher_live: str | None = None  # why the shared teacher outputs offered do not serve this run (it runs its teacher)


def build_schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """The lr factor per step: a linear rise over ``warmup`` of the steps, then cosine to 0 (or
    constant); one-cycle brings its own rise."""
    if cfg.schedule == "onecycle":
        peaks = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total_steps)
    rise = int(cfg.warmup * total_steps)
    decay = max(1, total_steps - rise)

    def factor(step: int) -> float:
        if step < rise:
            return (step + 1) / rise
        if cfg.schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step - rise, decay) / decay))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """``params``: parameters, or groups (dicts) each with its own ``lr``."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)


def parameter_groups(cfg: TrainConfig, student: nn.Module, method: nn.Module) -> list[dict]:
    """One group at ``lr``; with ``head_lr``, the student's last linear layer in a group of its own
    (a pretrained model's new head learns faster than its backbone)."""
    head = head_name(student) if cfg.head_lr is not None else None
    head_params = list(student.get_submodule(head).parameters()) if head else []
    chosen = {id(p) for p in head_params}
    rest = [p for p in (*student.parameters(), *method.parameters()) if id(p) not in chosen]
    groups = [{"params": rest, "lr": cfg.lr}]
    if head_params:
        groups.append({"params": head_params, "lr": cfg.head_lr})
    return groups


def student_spec(cfg: TrainConfig, data: DatasetSplits) -> dict:
    """How to build ``cfg``'s student for ``data`` (what its checkpoints record)."""
    stem = resolve_stem(cfg.stem, data.image_size)
    return model_spec(
        cfg.student,
        data.num_outputs,
        data.in_channels,
        stem,
        cfg.student_width,
        cfg.student_args,
        features=cfg.features.get("student"),
    )


def build_run(
    cfg: TrainConfig,
    data: DatasetSplits,
    teacher,
    teacher_outputs,
    log: Callable[[str], None],
    *,
    initial_student: nn.Module | None = None,
    placement: str | None = None,
) -> TrainingRun:
    """``placement``: where the data lives, when a sweep's driver chose it for every trial
    (data.placement); else chosen here from ``cfg.data_placement``."""
    device = resolve_device(cfg.device)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.preserve_format

    torch.manual_seed(cfg.seed)
    spec = student_spec(cfg, data)

    def make_student() -> nn.Module:
        return build_from_spec(spec)

    student = initial_student if initial_student is not None else make_student()
    method = build_method(
        cfg.method, cfg.method_args, objective=TaskLoss(data.multilabel, cfg.label_smoothing), make_peer=make_student
    )
    if method.reads.needs_teacher and teacher is None:
        raise UserError(f"method {cfg.method!r} needs a teacher: pass one (kdsearch.fit finds or trains it for a config)")
    student.to(device, memory_format=memory_format)

    teacher_model = teacher.model if method.reads.needs_teacher else None
    context = {"amp": amp, "device": device, "memory_format": memory_format}
    outputs, live = _teacher_side(
        cfg, data, teacher, teacher_model=teacher_model, teacher_outputs=teacher_outputs, method=method, log=log, **context
    )

    student_forward, teacher_forward = method_inputs.forwards(cfg, spec, student, teacher, outputs=outputs, method=method)
    taps = [f for f in (student_forward, teacher_forward) if f is not None]
    seen = method_inputs.seen_by(
        cfg, data, teacher, student_forward, teacher_forward, method=method, device=device, memory_format=memory_format
    )
    method.build(seen)  # its own modules (connectors, a memory bank) from the shapes it will see, before the optimiser
    method.to(device, memory_format=memory_format)
    if cfg.compile:
        student_forward, teacher_forward = _compiled(student_forward, teacher_forward, method)
    placement, data = place(cfg, data, device, log, decided=placement)  # said once the settings are known to work
    split = split_for(placement)
    train = split(data.train_x, data.train_y, data.mean, data.std, device, channels_last, pad=cfg.crop_pad)
    val = split(data.val_x, data.val_y, data.mean, data.std, device, channels_last)
    optimizer = build_optimizer(cfg, parameter_groups(cfg, student, method))
    scheduler = build_schedule(cfg, optimizer, train.num_batches(cfg.batch_size) * cfg.epochs)
    forwards = (student_forward, teacher_forward, outputs, taps, schedules.scheduled(cfg.method_args))
    return TrainingRun(cfg, device, amp, spec, student, method, train, val, optimizer, scheduler, *forwards, teacher_live=live)


def _teacher_side(cfg, data, teacher, *, teacher_model, teacher_outputs, method, amp, device, memory_format, log):
    """The shared teacher outputs a run looks up, on this device (None to run the teacher live,
    then made ready: on the device, frozen; or when the method needs no teacher), and why the
    outputs offered do not serve this run (None when they do, or none were offered)."""
    outputs, why = teacher_outputs if teacher_model is not None else None, None
    if outputs is not None:
        why = outputs.mismatch(cfg, data, teacher_model, method, teacher_feature_names(cfg, teacher), amp)
        if why is not None:
            outputs = None  # another teacher, other images or views, or without what this method reads: run the teacher live
    if outputs is None and teacher_model is not None:
        teacher_model.to(device, memory_format=memory_format).eval()
        for p in teacher_model.parameters():  # (a TorchScript module has no requires_grad_)
            p.requires_grad_(False)
    if teacher_model is not None:
        log(
            "teacher outputs: looked up in the shared cache"
            if outputs is not None
            else "teacher outputs: computed live every step" + (f" ({why})" if why else "")
        )
    return outputs, why


def _compiled(student_forward, teacher_forward, method: Method):
    """The forward passes compiled (the loss and optimiser step stay eager), with static shapes:
    one graph for the batch size, one for the epoch's last batch. Dynamo's cache is reset first:
    a reused Ray actor would otherwise pile entries onto the same code object until Dynamo
    silently falls back to eager."""
    torch.compiler.reset()
    student_forward = torch.compile(student_forward.__call__, dynamic=False)
    if teacher_forward is not None:
        teacher_forward = torch.compile(teacher_forward.__call__, dynamic=False)
    for module in method.extra_modules():
        module.compile(dynamic=False)
    return student_forward, teacher_forward


def restore(run: TrainingRun, state: dict) -> tuple[int, float]:
    """Load a saved ``EpochState.training_state()``; returns (epochs done, best validation accuracy)."""
    run.student.load_state_dict(state["student"])
    run.method.load_state_dict(state["method"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), float(state["best_val"])


def train_epoch(run: TrainingRun, epoch: int) -> dict:
    """One pass over the training split; the mean of each loss term."""
    cfg = run.cfg
    started = time.perf_counter()
    run.student.train()
    run.method.train()
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    looked_up = run.teacher_outputs.epoch_on(epoch, run.device) if run.teacher_outputs is not None else None
    per_epoch = run.train.num_batches(cfg.batch_size)
    now: dict = {}  # the scheduled settings' values at this step: what the loss uses and the log shows
    for x, y, idx in run.train.train_batches(cfg.batch_size, cfg.seed, epoch, cfg.flip):
        interrupts.check()
        if run.moving:  # scheduled settings follow the share of training done, step by step
            progress = schedules.progress(epoch * per_epoch + steps, cfg.epochs * per_epoch)
            now = schedules.settings_at(run.moving, progress, cfg.epochs)
            for name, value in now.items():
                setattr(run.method, name, value)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
            logits, features, embedding = run.student_forward(x)
            student_out = Outputs(logits, features, embedding=embedding)
            teacher_out = None
            if looked_up is not None:
                teacher_out = looked_up.lookup(idx)
            elif run.teacher_forward is not None:
                with torch.no_grad():
                    teacher_out = live_teacher(run.teacher_forward(x), run.method.reads)
            index = {"index": idx} if run.method.reads.index else {}
            try:
                terms = run.method(student_out, y, teacher_out, x, **index)
            except ValueError as exc:  # a setting that does not fit these models (e.g. AT's stage weights)
                raise UserError(f"method {cfg.method!r}: {exc}") from None
        run.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        run.optimizer.step()
        run.scheduler.step()
        steps += 1
        for k, v in terms.items():  # summed on the device: no host sync per step
            sums[k] = sums.get(k, 0) + v.detach().float()
    out = {f"train/{k}": float(v) / steps for k, v in sums.items()}  # float() waits for the device
    out.update(schedules.as_metrics(now))  # what each scheduled setting was at the epoch's last step
    out["time/epoch_train_s"] = time.perf_counter() - started  # the training steps alone, without validation
    if not math.isfinite(out["train/loss"]):
        raise TrainingDiverged(
            f"training diverged: the loss became {out['train/loss']} in epoch {epoch + 1}; lower lr (now {cfg.lr}) or the method's loss weights"
        )
    return out


def plain_loss(multilabel: bool):
    """Validation and test losses: the task's loss without label smoothing, comparable across runs."""
    return TaskLoss(multilabel).hard


def final_metrics(
    student: nn.Module, data: DatasetSplits, teacher, cfg: TrainConfig, *, amp: bool = False, measure_speed: bool = True
) -> dict:
    """The student on the test split, and what it costs next to its teacher (when there is one)."""
    device = resolve_device(cfg.device)
    test = split_of(data.test_x, data.test_y, data.mean, data.std, device)
    metrics = {
        f"test/{k}": v
        for k, v in evaluate(
            student.to(device), test, cfg.eval_batch_size, data.multilabel, plain_loss(data.multilabel), amp
        ).items()
    }
    teacher_test = None
    if teacher is not None:
        metrics.update({f"teacher/{k.replace('/', '_')}": v for k, v in teacher.metrics.items() if k in ("val/acc", "test/acc")})
        teacher_test = teacher.metrics.get("test/acc")
    metrics.update(
        compression_report(
            student,
            teacher.model if teacher is not None else None,
            (data.in_channels, *data.image_size),
            student_acc=metrics["test/acc"],
            teacher_acc=teacher_test,
            measure_speed=measure_speed,
        )
    )
    return metrics


def train_student(
    config: TrainConfig | dict,
    data: DatasetSplits,
    teacher=None,
    *,
    on_epoch_end: EpochCallback | None = None,
    log: Callable[[str], None] = lambda _: None,
    measure_speed: bool = True,
    evaluate_test: bool = True,
    resume: dict | None = None,
    teacher_outputs=None,
    initial_student: nn.Module | None = None,
) -> FitResult:
    """Train a student with the configured method; validate every epoch, test once at the end.

    ``teacher`` (a ``kdsearch.teacher.weights.Teacher``) is required by methods that need one and, if
    given, is the reference of the compression metrics. ``on_epoch_end`` gets each epoch's
    metrics and an ``EpochState``; ``resume`` is a saved ``EpochState.training_state()``.
    Sweeps pass ``evaluate_test=False``: trials are selected on validation, and only the
    chosen student meets the test split. ``teacher_outputs`` (precomputed for these views,
    ``kdsearch.teacher.outputs``) replaces the live teacher by a lookup when it fits the run.
    ``initial_student`` (a pretrained model, say) is trained instead of a fresh one.
    """
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    set_threads(cfg.threads)
    run = build_run(cfg, data, teacher, teacher_outputs, log, initial_student=initial_student)
    try:
        return train_and_test(
            run,
            cfg,
            data,
            teacher,
            on_epoch_end=on_epoch_end,
            log=log,
            measure_speed=measure_speed,
            evaluate_test=evaluate_test,
            resume=resume,
        )
    finally:
        for tap in run.taps:
            tap.close()


def run_epoch(run: TrainingRun, data: DatasetSplits, epoch: int, best_val: float) -> tuple[dict, float]:
    """Train one epoch and validate: the epoch's metrics, and the best validation accuracy so far."""
    started = time.perf_counter()
    metrics = {"epoch": epoch + 1, **train_epoch(run, epoch)}
    val = evaluate(run.student, run.val, run.cfg.eval_batch_size, data.multilabel, plain_loss(data.multilabel), run.amp)
    best_val = max(best_val, val["acc"])
    metrics.update({f"val/{k}": v for k, v in val.items()})
    metrics.update(
        {"val/best_acc": best_val, "lr": run.optimizer.param_groups[0]["lr"], "time/epoch_s": time.perf_counter() - started}
    )
    return metrics, best_val


def train_and_test(run: TrainingRun, cfg, data, teacher, *, on_epoch_end, log, measure_speed, evaluate_test, resume) -> FitResult:
    first_epoch, best_val = restore(run, resume) if resume is not None else (0, -math.inf)
    if resume is not None:
        log(f"resuming after epoch {first_epoch}")
    history: list[dict] = []
    started = time.perf_counter()
    for epoch in range(first_epoch, cfg.epochs):
        metrics, best_val = run_epoch(run, data, epoch, best_val)
        if epoch == first_epoch and run.method.describe():  # known once the first batch has passed
            log(run.method.describe())
        history.append(metrics)
        log(
            f"epoch {epoch + 1:>3}/{cfg.epochs}  train/loss {metrics['train/loss']:.4f}  val/acc {metrics['val/acc']:.4f}  ({metrics['time/epoch_s']:.1f}s)"
        )
        if on_epoch_end is not None:
            on_epoch_end(metrics, EpochState(epoch + 1, best_val, run.student, run.method, run.optimizer, run.scheduler))

    final = {k: v for k, v in history[-1].items() if k.startswith("val/")} if history else {}
    final["time/train_s"] = time.perf_counter() - started
    if evaluate_test:
        final.update(final_metrics(run.student, data, teacher, cfg, amp=run.amp, measure_speed=measure_speed))
    return FitResult(cfg, run.student, run.spec, data.info(), final, history, verify=data.verify_sample())
