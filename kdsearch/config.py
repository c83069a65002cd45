"""One training run's settings: a frozen dataclass built from a dict or a YAML file.

Unset fields (``None``) take the dataset's defaults from ``DATASET_DEFAULTS`` when the
config is resolved, so ``TrainConfig(method="kd", dataset="digits")`` is a complete run.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdsearch.errors import UserError

# Per-dataset defaults: the models, schedule and augmentation that work for that data.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # 8x8 digits: a resnet20 teacher trains to ~98% in seconds; no flips (a flipped 2 is not a 2).
    "digits": dict(teacher="resnet20", student="resnet8", epochs=30, teacher_epochs=30, batch_size=64, lr=0.05, crop_pad=1, flip=False),
    # 28x28 grey: the CPU-scale reference setting (pad-2 crop + flip, as in STACK-FACTS' reference runs).
    "fashion_mnist": dict(teacher="resnet56", student="resnet8", epochs=15, teacher_epochs=15, batch_size=128, lr=0.1, crop_pad=2, flip=True),
    # 32x32 colour: the published table's setting, ResNet-50 teacher, ResNet-18 student (GPU work).
    "cifar10": dict(teacher="resnet50", student="resnet18", epochs=60, teacher_epochs=60, batch_size=128, lr=0.1, crop_pad=4, flip=True),
    "cifar100": dict(teacher="resnet50", student="resnet18", epochs=60, teacher_epochs=60, batch_size=128, lr=0.1, crop_pad=4, flip=True),
    # Faces decoded once at 128x128; the ImageNet stem brings them to 32x32 after the stem.
    "celeba": dict(teacher="resnet50", student="resnet18", epochs=15, teacher_epochs=15, batch_size=256, lr=0.1, crop_pad=8, flip=True, image_size=128),
}

CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("cosine", "onecycle", "constant"),
    "stem": ("auto", "cifar", "imagenet"),
    "device": None,  # free-form: auto, cpu, cuda, cuda:1, mps
}


@dataclass(frozen=True)
class TrainConfig:
    # What to distil
    method: str = "kd"
    method_args: dict = field(default_factory=dict)
    dataset: str = "digits"
    student: str | None = None
    student_width: float = 1.0
    teacher: str | None = None
    teacher_width: float = 1.0
    teacher_checkpoint: str | None = None
    stem: str = "auto"  # auto: the CIFAR stem up to 64x64 images, the ImageNet stem above
    # Data
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None  # CelebA's decode resolution
    val_fraction: float = 0.1
    split_seed: int = 0  # fixed apart from `seed`, so every run selects on the same images
    train_subset: int | None = None  # search on a subset of the training split
    crop_pad: int | None = None
    flip: bool | None = None
    # Optimisation
    epochs: int | None = None
    teacher_epochs: int | None = None
    batch_size: int | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    seed: int = 0
    teacher_seed: int = 0
    # Execution
    device: str = "auto"
    amp: bool | None = None  # None: bf16 autocast on CUDA, off on CPU
    channels_last: bool | None = None  # None: on for CUDA
    compile: bool = False  # torch.compile the student's (and a live teacher's) forward pass
    threads: int | None = None  # None: the CPUs this process was given
    eval_batch_size: int | None = None  # None: 1024 on a GPU, 64 on a CPU (see inference_batch_size)
    cache_dir: str | None = None  # where trained teachers are kept

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        if not isinstance(values, dict):
            raise UserError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        out = {}
        for key, value in values.items():
            if key not in names:
                raise UserError(f"{source}: unknown key {key!r}; valid keys are {', '.join(names)}")
            out[key] = _coerce(value, hints[key], f"{source}: {key}")
        return cls(**out)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> TrainConfig:
        values = load_yaml(path)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise UserError(f"{path}: expected a mapping of settings at the top level")
        return cls.from_dict({**values, **(overrides or {})}, source=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved(self) -> TrainConfig:
        """Fill unset fields from the dataset's defaults and check the choices."""
        defaults = DATASET_DEFAULTS.get(self.dataset)
        if defaults is None:
            raise UserError(f"unknown dataset {self.dataset!r}: choose one of {', '.join(sorted(DATASET_DEFAULTS))}")
        for name, choices in CHOICES.items():
            if choices and getattr(self, name) not in choices:
                raise UserError(f"unknown {name} {getattr(self, name)!r}: choose one of {', '.join(choices)}")
        filled = {k: v for k, v in defaults.items() if getattr(self, k, None) is None}
        if self.eval_batch_size is None:
            filled["eval_batch_size"] = inference_batch_size(_device_type(self.device))
        cfg = dataclasses.replace(self, **filled)
        for name in ("epochs", "teacher_epochs", "batch_size", "eval_batch_size"):
            if getattr(cfg, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
        if cfg.batch_size < 2:
            raise UserError(f"batch_size must be at least 2 (batch norm needs two images per batch), got {cfg.batch_size}")
        if not cfg.lr > 0:
            raise UserError(f"lr must be > 0, got {cfg.lr}")
        if cfg.crop_pad < 0:
            raise UserError(f"crop_pad must be >= 0, got {cfg.crop_pad}")
        if not 0 < cfg.val_fraction < 1:
            raise UserError(f"val_fraction must be between 0 and 1, got {cfg.val_fraction}")
        return cfg


def inference_batch_size(device_type: str) -> int:
    """Batch size for forward-only passes (validation, test, the teacher cache). A GPU wants
    large batches; on a CPU a batch of 1024 spills the caches and ran 2-4x slower than 64 here
    (2 threads: resnet56 445 vs 1,690 img/s, resnet20 771 vs 3,345)."""
    return 1024 if device_type == "cuda" else 64


def _device_type(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name.split(":")[0]


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a value against a field's type, accepting '1e-3' and 3 for a float."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise UserError(f"{where} must not be empty")
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if base is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where} must be an integer, got {value!r}")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where} must be a number, got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where} must be a string, got {value!r}")
    return value


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; read it as the number people mean."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing or malformed file is a one-line UserError."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None


def parse_value(text: str) -> Any:
    """A command-line value (``--set temperature=4``) read as YAML: numbers, lists, booleans."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text
