"""One teacher-guided student training run, in plain PyTorch (no Ray, no MLflow)."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdsearch.checkpoint import model_spec, save_checkpoint
from kdsearch.compression import compression_report
from kdsearch.config import TrainConfig
from kdsearch.data import DatasetSplits, load_dataset
from kdsearch.data.pipeline import DeviceData
from kdsearch.errors import UserError
from kdsearch.evaluate import evaluate
from kdsearch.methods import Objective, Outputs, build_method
from kdsearch.models import build_model



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
        """A snapshot of plain state dicts (loadable with weights_only=True) for ``fit(resume=...)``."""
        return copy.deepcopy({
            "epoch": self.epoch,
            "best_val": self.best_val,
            "student": self.student.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        })


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

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.student, self.spec, dataset=self.data_info, metrics=self.metrics, config=self.config.to_dict())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but no CUDA GPU is visible: use --device cpu")
    return device


def set_threads(threads: int | None) -> int:
    """Use the CPUs this process was given: Ray sets OMP_NUM_THREADS per trial, and two
    processes with 2 threads each on 2 cores run 3-5x slower than with one thread each."""
    n = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, n))
    return n


def resolve_stem(stem: str, image_size: tuple[int, int]) -> str:
    if stem != "auto":
        return stem
    return "cifar" if min(image_size) <= 64 else "imagenet"


def data_info(data: DatasetSplits) -> dict:
    """What a checkpoint needs to say about the data it expects."""
    return {
        "name": data.name,
        "image_size": list(data.image_size),
        "in_channels": data.in_channels,
        "mean": list(data.mean),
        "std": list(data.std),
        "class_names": data.class_names,
        "multilabel": data.multilabel,
    }


def build_schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def build_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)


def fit(
    config: TrainConfig | dict,
    data: DatasetSplits | None = None,
    teacher=None,
    on_epoch_end: EpochCallback | None = None,
    log: Callable[[str], None] = lambda _: None,
    measure_speed: bool = True,
    evaluate_test: bool = True,
    resume: dict | None = None,
    teacher_outputs=None,
) -> FitResult:
    """Train a student with the configured method; evaluate validation every epoch, test once at the end.

    ``teacher`` is a ``kdsearch.teachers.Teacher``; when the method needs one and none is
    given, it is loaded from the cache (or trained once and cached). ``on_epoch_end`` gets
    each epoch's metrics and an ``EpochState``; ``resume`` is a saved
    ``EpochState.training_state()`` to continue from. Sweeps pass ``evaluate_test=False``:
    trials are selected on validation, and only the chosen student meets the test split.
    ``teacher_outputs`` (a ``kdsearch.teacher_cache.TeacherOutputs`` for these views)
    replaces the live teacher's forward pass by a lookup; one that does not fit this run
    (other seed, augmentation or epochs, or AT without its maps) is ignored.
    """
    cfg = (TrainConfig.from_dict(config) if isinstance(config, dict) else config).resolved()
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.val_fraction, cfg.split_seed, cfg.image_size, cfg.train_subset)
    stem = resolve_stem(cfg.stem, data.image_size)
    objective = Objective(multilabel=data.multilabel, label_smoothing=cfg.label_smoothing)

    torch.manual_seed(cfg.seed)
    spec = model_spec(cfg.student, data.num_outputs, data.in_channels, stem, cfg.student_width)

    def make_student() -> nn.Module:
        return build_model(cfg.student, data.num_outputs, data.in_channels, stem, cfg.student_width)

    student = make_student()
    method = build_method(cfg.method, cfg.method_args, objective=objective, make_peer=make_student)
    if method.needs_teacher and teacher is None:
        from kdsearch.teachers import get_teacher

        teacher = get_teacher(cfg, data, log=log)
    teacher_model = teacher.model if (teacher is not None and method.needs_teacher) else None

    memory_format = torch.channels_last if channels_last else torch.preserve_format
    student.to(device, memory_format=memory_format)
    method.to(device, memory_format=memory_format)
    if teacher_model is not None:
        teacher_model.to(device, memory_format=memory_format).eval().requires_grad_(False)

    cache = teacher_outputs if teacher_model is not None else None
    if cache is not None and not cache.matches(cfg.seed, cfg.crop_pad, cfg.flip, cfg.epochs):
        cache = None
    if cache is not None and getattr(method, "needs_teacher_features", False) and (cache.attention is None or getattr(method, "p", 2) != 2):
        cache = None
    if cache is not None:
        cache = cache.to(device)  # lookups then stay on the training device
    if teacher_model is not None:
        log(f"teacher outputs: {'looked up in the shared cache' if cache is not None else 'computed live every step'}")
    student_forward = student.forward_with_features
    teacher_forward = teacher_model.forward_with_features if teacher_model is not None else None
    if cfg.compile:
        # The forward passes only (the loss and optimiser step stay eager), with static shapes:
        # one graph for the batch size, one for the epoch's last batch. Dynamo's cache is reset
        # first: a reused Ray actor would otherwise pile entries onto the same code object until
        # Dynamo silently falls back to eager. DML's peers compile as modules.
        torch._dynamo.reset()
        student_forward = torch.compile(student_forward, dynamic=False)
        if teacher_forward is not None and cache is None:
            teacher_forward = torch.compile(teacher_forward, dynamic=False)
        for peer in getattr(method, "peers", []):
            peer.compile(dynamic=False)
    train = DeviceData(data.train_x, data.train_y, data.mean, data.std, device, channels_last, pad=cfg.crop_pad)
    val = DeviceData(data.val_x, data.val_y, data.mean, data.std, device, channels_last)
    steps = train.num_batches(cfg.batch_size)
    optimizer = build_optimizer(cfg, [*student.parameters(), *method.parameters()])
    scheduler = build_schedule(cfg, optimizer, steps * cfg.epochs)

    history: list[dict] = []
    best_val = -math.inf
    first_epoch = 0
    if resume is not None:
        student.load_state_dict(resume["student"])
        method.load_state_dict(resume["method"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        first_epoch, best_val = int(resume["epoch"]), float(resume["best_val"])
        log(f"resuming after epoch {first_epoch}")
    started = time.perf_counter()
    for epoch in range(first_epoch, cfg.epochs):
        t0 = time.perf_counter()
        student.train()
        method.train()
        sums: dict[str, torch.Tensor] = {}
        for x, y, idx in train.train_batches(cfg.batch_size, cfg.seed, epoch, cfg.flip):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                student_out = Outputs(*student_forward(x))
                teacher_out = None
                if cache is not None:
                    logits, maps = cache.lookup(epoch, idx)
                    teacher_out = Outputs(logits, [], maps)
                elif teacher_model is not None:
                    with torch.no_grad():
                        teacher_out = Outputs(*teacher_forward(x))
                terms = method(student_out, y, teacher_out, x)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            scheduler.step()
            for k, v in terms.items():  # summed on the device: no host sync per step
                sums[k] = sums.get(k, 0) + v.detach().float()
        train_terms = {f"train/{k}": float(v) / steps for k, v in sums.items()}  # float() waits for the device
        train_terms["time/epoch_train_s"] = time.perf_counter() - t0  # the training steps alone, without validation
        if not math.isfinite(train_terms["train/loss"]):
            raise TrainingDiverged(
                f"training diverged: the loss became {train_terms['train/loss']} in epoch {epoch + 1}; "
                f"lower lr (now {cfg.lr}) or the method's loss weights"
            )
        val_metrics = evaluate(student, val, cfg.eval_batch_size, data.multilabel, objective.hard, amp)
        best_val = max(best_val, val_metrics["acc"])
        metrics = {
            "epoch": epoch + 1,
            **train_terms,
            **{f"val/{k}": v for k, v in val_metrics.items()},
            "val/best_acc": best_val,
            "lr": optimizer.param_groups[0]["lr"],
            "time/epoch_s": time.perf_counter() - t0,
        }
        history.append(metrics)
        log(
            f"epoch {epoch + 1:>3}/{cfg.epochs}  train/loss {metrics['train/loss']:.4f}  "
            f"val/acc {metrics['val/acc']:.4f}  ({metrics['time/epoch_s']:.1f}s)"
        )
        if on_epoch_end is not None:
            on_epoch_end(metrics, EpochState(epoch + 1, best_val, student, method, optimizer, scheduler))
    train_seconds = time.perf_counter() - started

    final = {k: v for k, v in history[-1].items() if k.startswith("val/")} if history else {}
    final["time/train_s"] = train_seconds
    if not evaluate_test:
        return FitResult(config=cfg, student=student, spec=spec, data_info=data_info(data), metrics=final, history=history)
    test = DeviceData(data.test_x, data.test_y, data.mean, data.std, device, channels_last)
    test_metrics = evaluate(student, test, cfg.eval_batch_size, data.multilabel, objective.hard, amp)
    final.update({f"test/{k}": v for k, v in test_metrics.items()})
    if teacher is None and measure_speed:
        from kdsearch.teachers import reference_teacher

        teacher = reference_teacher(cfg, data, stem)
    teacher_test = None
    if teacher is not None:
        final.update({f"teacher/{k.replace('/', '_')}": v for k, v in teacher.metrics.items() if k in ("val/acc", "test/acc")})
        teacher_test = teacher.metrics.get("test/acc")
    final.update(
        compression_report(
            student,
            teacher.model if teacher is not None else None,
            (data.in_channels, *data.image_size),
            student_acc=final["test/acc"],
            teacher_acc=teacher_test,
            measure_speed=measure_speed,
        )
    )
    return FitResult(config=cfg, student=student, spec=spec, data_info=data_info(data), metrics=final, history=history)
