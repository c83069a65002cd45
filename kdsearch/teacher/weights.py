"""Teacher models (their weights): where they come from, and trained once and cached.

A teacher comes from one of three places: a file (``teacher_checkpoint``: a kdsearch
checkpoint, a state dict, safetensors or TorchScript), torchvision's pretrained weights
(``teacher_weights``), or nothing, in which case it is trained from scratch. A teacher whose
head fits the data is used as it is; one with a head for other classes gets a new head and is
fine-tuned (``teacher_lr`` for the backbone, ``teacher_head_lr`` for the head). Every teacher
trained here is cached under a key made of the data's content (``DatasetSplits.fingerprint``),
where its weights started and its training settings, so no other data set ever reuses it.
(The teacher's precomputed outputs are ``kdsearch.teacher.outputs``.)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdsearch.config import TrainConfig
from kdsearch.data import DatasetSplits
from kdsearch.data.pipeline import DeviceData, split_of
from kdsearch.data.splits import HELD_OUT
from kdsearch.errors import UserError
from kdsearch.methods import TaskLoss
from kdsearch.models import pretrained_arch
from kdsearch.models.checkpoint import build_from_spec, load_model, model_spec
from kdsearch.models.pretrained import load_weights, read_weights_file, torchvision_weights
from kdsearch.runtime import object_storage
from kdsearch.runtime.device import resolve_device, resolve_stem
from kdsearch.training.engine import train_student
from kdsearch.training.evaluate import evaluate

# The settings of a teacher's own training run that change what teacher comes out of it.
_TEACHER_KEY_FIELDS = (
    *("dataset", "image_size", "val_fraction", "split_seed", "train_subset", "crop_pad", "flip", "stem"),
    *("student", "student_width", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay"),
    *("schedule", "label_smoothing", "seed", "student_args", "head_lr"),
)


@dataclass
class Teacher:
    model: nn.Module
    arch: str
    metrics: dict  # val/acc and test/acc at least
    path: Path | None
    spec: dict | None  # how to rebuild the model (kdsearch.models.checkpoint.model_spec); None: TorchScript or a given module


def default_cache_dir() -> Path:
    return object_storage.cache_root()


def teacher_training_config(cfg: TrainConfig) -> TrainConfig:
    """The run that trains ``cfg``'s teacher: its architecture alone on the labels, with the
    teacher's own settings (``teacher_*``, else the dataset's presets) on the same data and
    execution settings. Nothing of the student's optimisation enters it."""
    same = ("dataset", "data_dir", "download", "image_size", "data_memory_gb", "val_fraction", "split_seed", "train_subset")
    execution = ("device", "amp", "channels_last", "compile", "threads", "eval_batch_size", "cache_dir", "stem", "data_placement")
    arch = teacher_arch(cfg)
    return TrainConfig(
        method="ce",
        **{name: getattr(cfg, name) for name in (*same, *execution)},
        student=arch,
        student_args=cfg.teacher_args,
        student_width=cfg.teacher_width,
        teacher=arch,
        teacher_args=cfg.teacher_args,
        teacher_width=cfg.teacher_width,
        epochs=cfg.teacher_epochs,
        teacher_epochs=cfg.teacher_epochs,
        lr=cfg.teacher_lr,
        head_lr=cfg.teacher_head_lr,
        batch_size=cfg.teacher_batch_size,
        seed=cfg.teacher_seed,
    )


def teacher_arch(cfg: TrainConfig) -> str:
    """The teacher's architecture: torchvision's own when its pretrained weights are named."""
    return pretrained_arch(cfg.teacher) if cfg.teacher_weights else cfg.teacher


def teacher_spec(cfg: TrainConfig, data: DatasetSplits) -> dict:
    """How to build the teacher for this data."""
    stem = resolve_stem(cfg.stem, data.image_size)
    return model_spec(teacher_arch(cfg), data.num_outputs, data.in_channels, stem, cfg.teacher_width, cfg.teacher_args)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_cache_path(cfg: TrainConfig, data: DatasetSplits, start: str = "scratch") -> Path:
    """Where the teacher trained for ``cfg`` on ``data`` from ``start`` (its initial weights) is
    cached: keyed by the data's content, not its name."""
    run = teacher_training_config(cfg)
    key = {name: getattr(run, name) for name in _TEACHER_KEY_FIELDS}
    key.update(data=data.fingerprint(), start=start, arch=run.student)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    arch = re.sub(r"[^\w.-]+", "_", run.student.rpartition(":")[2])
    return root / "teachers" / f"{data.name}-{arch}-seed{cfg.teacher_seed}-{digest}.pt"


def load_teacher_checkpoint(path: str | Path, data: DatasetSplits, payload: dict | None = None) -> tuple[nn.Module, dict]:
    model, payload = load_model(path, payload)
    spec = payload["model"]
    trained_on = payload.get("dataset", {}).get("name", "an unknown dataset")
    if spec["num_outputs"] != data.num_outputs:
        raise UserError(
            f"teacher checkpoint {path} has {spec['num_outputs']} outputs (trained on {trained_on}) but "
            f"{data.name} has {data.num_outputs} classes: pass a teacher trained on {data.name}"
        )
    if spec["in_channels"] != data.in_channels:
        raise UserError(
            f"teacher checkpoint {path} takes {spec['in_channels']} input channels but {data.name} images have "
            f"{data.in_channels}: pass a teacher trained on {data.name}"
        )
    check_split(path, payload.get("dataset", {}), data)
    return model, payload


def check_split(path, recorded: dict, data: DatasetSplits) -> None:
    """Refuse a teacher trained on the same dataset under another split: its training images
    may be this run's validation images (then selection is biased) or test images (then the
    reported accuracy is). A checkpoint that records no split (an older one) is not checked."""
    theirs, ours = recorded.get("split") or {}, data.split or {}
    if recorded.get("name") != data.name or not theirs or not ours:
        return
    keys = [k for k in ("val_fraction", "split_seed") if theirs.get(k) != ours.get(k)]
    if not keys or HELD_OUT not in (ours.get("val"), ours.get("test")):
        return
    which = "test" if ours.get("test") == HELD_OUT else "validation"
    raise UserError(
        f"teacher checkpoint {path} was trained with "
        + ", ".join(f"{k}={theirs.get(k)}" for k in keys)
        + " but this run uses "
        + ", ".join(f"{k}={ours.get(k)}" for k in keys)
        + f": it may have trained on this run's {which} images; pass "
        + " ".join(f"--{k.replace('_', '-')} {theirs.get(k)}" for k in keys)
        + " (or train the teacher under this split)"
    )


def _measure(model: nn.Module, data: DatasetSplits, cfg: TrainConfig) -> dict:
    device = resolve_device(cfg.device)
    model.to(device).eval()
    objective = TaskLoss(multilabel=data.multilabel)
    out = {}
    for split, (x, y) in {"val": (data.val_x, data.val_y), "test": (data.test_x, data.test_y)}.items():
        metrics = evaluate(
            model, split_of(x, y, data.mean, data.std, device), cfg.eval_batch_size, data.multilabel, objective.hard
        )
        out.update({f"{split}/{k}": v for k, v in metrics.items()})
    return out


def reference_teacher(cfg: TrainConfig, data: DatasetSplits) -> Teacher:
    """The teacher a teacher-free run (ce, dml) is compared against: the user's or the
    cached one when it exists (with its accuracy), else an untrained model of the
    teacher architecture (enough for parameters, size, FLOPs and latency)."""
    if cfg.teacher_checkpoint or cfg.teacher_weights:
        return get_teacher(cfg, data)
    path = teacher_cache_path(cfg, data)
    if path.is_file():
        model, payload = load_teacher_checkpoint(path, data)
        return Teacher(model, cfg.teacher, dict(payload["metrics"]), path, payload["model"])
    spec = teacher_spec(cfg, data)
    return Teacher(build_from_spec(spec), cfg.teacher, {}, None, spec)


def given_teacher(teacher: Teacher | nn.Module, cfg: TrainConfig, data: DatasetSplits) -> Teacher:
    """A teacher handed over in Python: a Teacher as it is, an ``nn.Module`` measured on the data."""
    if isinstance(teacher, Teacher):
        return teacher
    if not isinstance(teacher, nn.Module):
        raise UserError(f"teacher must be a torch.nn.Module (or a kdsearch Teacher), got {type(teacher).__name__}")
    return Teacher(teacher, type(teacher).__name__, _measure(teacher, data, cfg), None, None)


def _check_sha(cfg: TrainConfig) -> None:
    if cfg.teacher_sha256 and Path(cfg.teacher_checkpoint).is_file():
        actual = file_sha256(cfg.teacher_checkpoint)
        if actual != cfg.teacher_sha256:
            raise UserError(
                f"teacher checkpoint {cfg.teacher_checkpoint} is not the teacher this config names (sha256 {actual[:12]}..., "
                f"expected {cfg.teacher_sha256[:12]}...): pass the file the run used, or drop teacher_sha256"
            )


def _scripted(model: nn.Module, cfg: TrainConfig, data: DatasetSplits, log) -> Teacher:
    """A TorchScript teacher: used as it is (its head cannot be replaced), logits only."""
    with torch.no_grad():
        out = model.eval()(
            DeviceData(data.val_x[:2], data.val_y[:2], data.mean, data.std, "cpu").normalise(data.val_x[:2].float())
        )
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != data.num_outputs:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"TorchScript teacher {cfg.teacher_checkpoint} gives {got} for 2 images but {data.name} has {data.num_outputs} "
            "classes: script a teacher with that many outputs, or pass its state dict to fine-tune it"
        )
    metrics = _measure(model, data, cfg)
    log(f"teacher (TorchScript) from {cfg.teacher_checkpoint}: val/acc {metrics['val/acc']:.4f}")
    return Teacher(model, "torchscript", metrics, Path(cfg.teacher_checkpoint), None)


def _start(cfg: TrainConfig, data: DatasetSplits) -> tuple[nn.Module, dict | None, str, bool]:
    """The teacher's initial model, its spec, what it started from (part of the cache key) and
    whether its head is new (then it is fine-tuned)."""
    spec = teacher_spec(cfg, data)
    if cfg.teacher_checkpoint:
        _check_sha(cfg)
        path = Path(cfg.teacher_checkpoint)
        kind, content = read_weights_file(path)
        if kind == "torchscript":
            return content, None, "torchscript", False
        if kind == "kdsearch":
            model, payload = load_teacher_checkpoint(path, data, content)  # fits, or a one-line error saying why not
            return model, payload["model"], "kdsearch", False
        model = build_from_spec(spec)
        return model, spec, f"file:{file_sha256(path)}", load_weights(model, content, f"teacher checkpoint {path}")
    model = build_from_spec(spec)
    state = torchvision_weights(spec["arch"], cfg.teacher_weights)
    fresh_head = load_weights(model, state, f"torchvision weights {cfg.teacher_weights}")
    return model, spec, f"torchvision:{spec['arch']}:{cfg.teacher_weights}", fresh_head


def get_teacher(cfg: TrainConfig, data: DatasetSplits, log: Callable[[str], None] = lambda _: None) -> Teacher:
    """The user's teacher (a file or pretrained weights, fine-tuned once when its head is new),
    else the cached teacher, else train one now and cache it."""
    model, start = None, "scratch"
    if cfg.teacher_checkpoint or cfg.teacher_weights:
        model, spec, start, fresh_head = _start(cfg, data)
        if start == "torchscript":
            return _scripted(model, cfg, data, log)
        if not fresh_head:
            metrics = _measure(model, data, cfg)
            where = cfg.teacher_checkpoint or f"torchvision weights {cfg.teacher_weights}"
            log(f"teacher {spec['arch']} from {where}: val/acc {metrics['val/acc']:.4f}")
            path = Path(cfg.teacher_checkpoint) if cfg.teacher_checkpoint else None
            return Teacher(model, spec["arch"], metrics, path, spec)
    path = teacher_cache_path(cfg, data, start)
    if path.is_file():
        model, payload = load_teacher_checkpoint(path, data)
        log(f"teacher {cfg.teacher} from cache {path}: test/acc {payload['metrics']['test/acc']:.4f}")
        return Teacher(model, cfg.teacher, dict(payload["metrics"]), path, payload["model"])

    what = "fine-tuning" if model is not None else "training"
    log(f"{what} teacher {cfg.teacher} on {data.name} for {cfg.teacher_epochs} epochs (cached at {path})")
    result = train_student(
        teacher_training_config(cfg), data, None, log=lambda m: log(f"[teacher] {m}"), measure_speed=False, initial_student=model
    )
    metrics = {k: v for k, v in result.metrics.items() if k.startswith(("val/", "test/"))}
    result.metrics = metrics
    try:
        result.save(path)
    except OSError as exc:
        raise UserError(f"cannot write the teacher cache {path} ({exc.strerror}): set --cache-dir to a writable folder") from None
    log(f"teacher {cfg.teacher}: val/acc {metrics['val/acc']:.4f}  test/acc {metrics['test/acc']:.4f}")
    return Teacher(result.student, cfg.teacher, metrics, path, result.spec)
