"""Teacher models (their weights): trained once and cached on disk, keyed by dataset,
architecture and seed. (The teacher's precomputed outputs are ``kdsearch.teacher_outputs``.)

Every later run with the same teacher settings loads the cached file instead of
training again. A user's own checkpoint (``teacher_checkpoint``) is checked against the
data before use: the wrong number of classes or input channels is a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from kdsearch.checkpoint import build_from_spec, load_model, model_spec
from kdsearch.config import TrainConfig
from kdsearch.data import DatasetSplits
from kdsearch.data.pipeline import DeviceData
from kdsearch.errors import UserError
from kdsearch.evaluate import evaluate
from kdsearch.methods import Objective
from kdsearch.runtime import resolve_device
from kdsearch.train import fit

# The settings of a teacher's own training run that change what teacher comes out of it.
_TEACHER_KEY_FIELDS = (
    *("dataset", "image_size", "val_fraction", "split_seed", "train_subset", "crop_pad", "flip", "stem"),
    *("student", "student_width", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay"),
    *("schedule", "label_smoothing", "seed"),
)


@dataclass
class Teacher:
    model: nn.Module
    arch: str
    metrics: dict  # val/acc and test/acc at least
    path: Path | None
    spec: dict  # how to rebuild the model (kdsearch.checkpoint.model_spec)


def default_cache_dir() -> Path:
    return Path(os.environ.get("KDSEARCH_CACHE", Path.home() / ".cache" / "kdsearch"))


def teacher_training_config(cfg: TrainConfig) -> TrainConfig:
    """The run that trains ``cfg``'s teacher: its architecture alone on the labels, with the
    teacher's own settings (``teacher_*``, else the dataset's presets) on the same data and
    execution settings. Nothing of the student's optimisation enters it."""
    same = ("dataset", "data_dir", "download", "image_size", "val_fraction", "split_seed", "train_subset", "stem")
    execution = ("device", "amp", "channels_last", "compile", "threads", "eval_batch_size", "cache_dir")
    return TrainConfig(
        method="ce",
        **{name: getattr(cfg, name) for name in (*same, *execution)},
        student=cfg.teacher,
        student_width=cfg.teacher_width,
        teacher=cfg.teacher,
        teacher_width=cfg.teacher_width,
        epochs=cfg.teacher_epochs,
        teacher_epochs=cfg.teacher_epochs,
        lr=cfg.teacher_lr,
        batch_size=cfg.teacher_batch_size,
        seed=cfg.teacher_seed,
    )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_cache_path(cfg: TrainConfig) -> Path:
    run = teacher_training_config(cfg)
    key = {name: getattr(run, name) for name in _TEACHER_KEY_FIELDS}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    return root / "teachers" / f"{cfg.dataset}-{cfg.teacher}-seed{cfg.teacher_seed}-{digest}.pt"


def load_teacher_checkpoint(path: str | Path, data: DatasetSplits) -> tuple[nn.Module, dict]:
    model, payload = load_model(path)
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
    return model, payload


def _measure(model: nn.Module, data: DatasetSplits, cfg: TrainConfig) -> dict:
    device = resolve_device(cfg.device)
    model.to(device).eval()
    objective = Objective(multilabel=data.multilabel)
    out = {}
    for split, (x, y) in {"val": (data.val_x, data.val_y), "test": (data.test_x, data.test_y)}.items():
        metrics = evaluate(
            model, DeviceData(x, y, data.mean, data.std, device), cfg.eval_batch_size, data.multilabel, objective.hard
        )
        out.update({f"{split}/{k}": v for k, v in metrics.items()})
    return out


def reference_teacher(cfg: TrainConfig, data: DatasetSplits, stem: str) -> Teacher:
    """The teacher a teacher-free run (ce, dml) is compared against: the user's or the
    cached one when it exists (with its accuracy), else an untrained model of the
    teacher architecture (enough for parameters, size, FLOPs and latency)."""
    if cfg.teacher_checkpoint:
        return get_teacher(cfg, data)
    path = teacher_cache_path(cfg)
    if path.is_file():
        model, payload = load_teacher_checkpoint(path, data)
        return Teacher(model, cfg.teacher, dict(payload["metrics"]), path, payload["model"])
    spec = model_spec(cfg.teacher, data.num_outputs, data.in_channels, stem, cfg.teacher_width)
    return Teacher(build_from_spec(spec), cfg.teacher, {}, None, spec)


def get_teacher(cfg: TrainConfig, data: DatasetSplits, log: Callable[[str], None] = lambda _: None) -> Teacher:
    """The user's checkpoint, else the cached teacher, else train one now and cache it."""
    if cfg.teacher_checkpoint:
        if cfg.teacher_sha256 and Path(cfg.teacher_checkpoint).is_file():
            actual = file_sha256(cfg.teacher_checkpoint)
            if actual != cfg.teacher_sha256:
                raise UserError(
                    f"teacher checkpoint {cfg.teacher_checkpoint} is not the teacher this config names (sha256 {actual[:12]}..., "
                    f"expected {cfg.teacher_sha256[:12]}...): pass the file the run used, or drop teacher_sha256"
                )
        model, payload = load_teacher_checkpoint(cfg.teacher_checkpoint, data)
        metrics = _measure(model, data, cfg)
        log(f"teacher {payload['model']['arch']} from {cfg.teacher_checkpoint}: val/acc {metrics['val/acc']:.4f}")
        return Teacher(model, payload["model"]["arch"], metrics, Path(cfg.teacher_checkpoint), payload["model"])
    path = teacher_cache_path(cfg)
    if path.is_file():
        model, payload = load_teacher_checkpoint(path, data)
        log(f"teacher {cfg.teacher} from cache {path}: test/acc {payload['metrics']['test/acc']:.4f}")
        return Teacher(model, cfg.teacher, dict(payload["metrics"]), path, payload["model"])

    log(f"training teacher {cfg.teacher} on {cfg.dataset} for {cfg.teacher_epochs} epochs (cached at {path})")
    result = fit(teacher_training_config(cfg), data, None, log=lambda m: log(f"[teacher] {m}"), measure_speed=False)
    metrics = {k: v for k, v in result.metrics.items() if k.startswith(("val/", "test/"))}
    result.metrics = metrics
    try:
        result.save(path)
    except OSError as exc:
        raise UserError(f"cannot write the teacher cache {path} ({exc.strerror}): set --cache-dir to a writable folder") from None
    log(f"teacher {cfg.teacher}: val/acc {metrics['val/acc']:.4f}  test/acc {metrics['test/acc']:.4f}")
    return Teacher(result.student, cfg.teacher, metrics, path, result.spec)
