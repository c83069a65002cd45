"""One training run's settings: a frozen dataclass built from a dict or a YAML file.

Unset fields (``None``) take the dataset's defaults from ``DATASET_DEFAULTS`` when the
config is built, so ``TrainConfig(method="kd", dataset="digits")`` is a complete run. Each
field carries its command-line help and choices as metadata (``kdsearch.cli`` reads them).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdsearch.errors import UserError
from kdsearch.settings.typed import coerce, load_yaml

# Per-dataset defaults: the models, schedule and augmentation that work for that data.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # 8x8 digits: a resnet20 teacher trains to ~98% in seconds; no flips (a flipped 2 is not a 2).
    "digits": dict(
        teacher="resnet20", student="resnet8", epochs=30, teacher_epochs=30, batch_size=64, lr=0.05, crop_pad=1, flip=False
    ),
    # 28x28 grey: the CPU-scale reference setting (pad-2 crop + flip, as in STACK-FACTS' reference runs).
    "fashion_mnist": dict(
        teacher="resnet56", student="resnet8", epochs=15, teacher_epochs=15, batch_size=128, lr=0.1, crop_pad=2, flip=True
    ),
    # 32x32 colour: the published table's setting, ResNet-50 teacher, ResNet-18 student (GPU work).
    "cifar10": dict(
        teacher="resnet50", student="resnet18", epochs=60, teacher_epochs=60, batch_size=128, lr=0.1, crop_pad=4, flip=True
    ),
    "cifar100": dict(
        teacher="resnet50", student="resnet18", epochs=60, teacher_epochs=60, batch_size=128, lr=0.1, crop_pad=4, flip=True
    ),
    # Faces decoded once at 128x128; the ImageNet stem brings them to 32x32 after the stem.
    "celeba": dict(
        teacher="resnet50",
        student="resnet18",
        epochs=15,
        teacher_epochs=15,
        batch_size=256,
        lr=0.1,
        crop_pad=8,
        flip=True,
        image_size=128,
    ),
    # The user's own images (data_dir/train/<class>/*): small CPU-scale models at 32x32 to start.
    "imagefolder": dict(
        teacher="resnet20",
        student="resnet8",
        epochs=15,
        teacher_epochs=15,
        batch_size=64,
        lr=0.05,
        crop_pad=2,
        flip=True,
        image_size=32,
    ),
}
_ARCH_HELP = "a built-in name (resnet8/14/20/32/56, resnet18/34/50) or your own as module:Name"


def _opt(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A field with its command-line help (and choices) as metadata: one source for both."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


_PRESET = "default: the dataset's"


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one run. Unset (None) settings that the dataset presets cover are
    filled in when the config is built, so ``TrainConfig(method="kd")`` is a complete run."""

    # What to distil
    method: str = _opt("kd", "distillation method: one of those listed at the end of `kdsearch train --help`")
    method_args: dict = _opt({}, "the method's settings (--set KEY=VALUE)")
    dataset: str = _opt("digits", "dataset", tuple(DATASET_DEFAULTS))
    student: str | None = _opt(None, f"student architecture: {_ARCH_HELP} ({_PRESET})")
    student_args: dict = _opt({}, "keyword arguments of an import-path student, besides num_classes and in_channels")
    student_width: float = _opt(1.0, "channel multiplier of a small-ResNet student")
    teacher: str | None = _opt(None, f"teacher architecture: {_ARCH_HELP} ({_PRESET})")
    teacher_args: dict = _opt({}, "keyword arguments of an import-path teacher, besides num_classes and in_channels")
    teacher_width: float = _opt(1.0, "channel multiplier of a small-ResNet teacher")
    teacher_weights: str | None = _opt(
        None, "torchvision pretrained weights of the teacher, e.g. IMAGENET1K_V2, read from the torch hub cache ($TORCH_HOME)"
    )
    teacher_checkpoint: str | None = _opt(
        None, "the teacher's weights: a kdsearch checkpoint, a state dict (.pt, .pth, .safetensors) or a TorchScript file"
    )
    teacher_sha256: str | None = _opt(
        None, "the SHA-256 the teacher checkpoint must have (a sweep's best/config.yaml pins its teacher so)"
    )
    features: dict = _opt({}, "modules Attention Transfer reads, by name: {student: [layer1, layer2], teacher: [layer2, layer3]}")
    stem: str = _opt("auto", "auto: the CIFAR stem up to 64x64 images, the ImageNet stem above", ("auto", "cifar", "imagenet"))
    # Data
    data_dir: str | None = _opt(None, "folder holding the dataset files (default $KDSEARCH_DATA or ./data)")
    download: bool = _opt(False, "download the dataset through torchvision if it is not in --data-dir")
    image_size: int | None = _opt(None, f"decode resolution of CelebA and image folders; resizes Fashion-MNIST ({_PRESET})")
    data_memory_gb: float | None = _opt(None, "most GiB an image folder may take decoded (default: half the memory)")
    data_placement: str = _opt(
        "auto",
        "where the training data lives: on each trial's device, in the node's one shared host copy, or streamed from "
        "memory-mapped files on disk (auto: the first that fits, said in one line)",
        ("auto", "device", "host", "stream"),
    )
    val_fraction: float = _opt(0.1, "share of the training split held out for validation")
    split_seed: int = _opt(0, "seed of the validation split, fixed apart from --seed so every run selects on the same images")
    train_subset: int | None = _opt(None, "train (and search) on this many training images")
    crop_pad: int | None = _opt(None, f"random-crop padding in pixels ({_PRESET})")
    flip: bool | None = _opt(None, f"random horizontal flips ({_PRESET})")
    # Optimisation
    epochs: int | None = _opt(None, f"student epochs ({_PRESET})")
    teacher_epochs: int | None = _opt(None, f"epochs to train a missing teacher ({_PRESET})")
    teacher_lr: float | None = _opt(None, f"learning rate of a teacher trained for this run ({_PRESET} lr)")
    teacher_head_lr: float | None = _opt(
        None, "learning rate of a pretrained teacher's new head while it is fine-tuned (default teacher_lr)"
    )
    teacher_batch_size: int | None = _opt(None, f"batch size of a teacher trained for this run ({_PRESET} batch size)")
    batch_size: int | None = _opt(None, f"training batch size ({_PRESET})")
    optimizer: str = _opt("sgd", "optimiser", ("sgd", "adamw"))
    lr: float | None = _opt(None, f"peak learning rate ({_PRESET})")
    head_lr: float | None = _opt(None, "learning rate of the model's last linear layer (default lr)")
    momentum: float = _opt(0.9, "SGD momentum (Nesterov when > 0)")
    weight_decay: float = _opt(5e-4, "weight decay")
    schedule: str = _opt(
        "onecycle",
        "learning-rate schedule (onecycle: chosen on validation accuracy, benchmarks/results/schedule.md)",
        ("onecycle", "cosine", "constant"),
    )
    warmup: float = _opt(
        0.0, "share of the training steps over which the lr rises linearly from 0 (cosine and constant schedules)"
    )
    label_smoothing: float = _opt(0.0, "label smoothing of the training loss (never of validation or test)")
    seed: int = _opt(0, "seed of initialisation, shuffling and augmentation")
    teacher_seed: int = _opt(0, "seed of a teacher trained for this run")
    # Execution
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    amp: bool | None = _opt(None, "bf16 autocast (default: on for CUDA)")
    channels_last: bool | None = _opt(None, "channels-last memory format (default: on for CUDA)")
    compile: bool = _opt(False, "torch.compile the student's (and a live teacher's) forward pass")
    threads: int | None = _opt(None, "CPU threads (default: the CPUs this process was given)")
    eval_batch_size: int | None = _opt(None, "batch size of forward-only passes (default: 1024 on a GPU, 64 on a CPU)")
    cache_dir: str | None = _opt(None, "where trained teachers are cached (default $KDSEARCH_CACHE or ~/.cache/kdsearch)")

    def __post_init__(self) -> None:
        defaults = DATASET_DEFAULTS.get(self.dataset)
        if defaults is None:
            raise UserError(f"unknown dataset {self.dataset!r}: choose one of {', '.join(sorted(DATASET_DEFAULTS))}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise UserError(f"unknown {f.name} {getattr(self, f.name)!r}: choose one of {', '.join(choices)}")
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)  # frozen: filled once, here
        # A teacher has its own optimisation settings, the dataset's presets unless given: a
        # student's lr or batch size never changes which teacher it is distilled from.
        for name, preset in (("teacher_lr", "lr"), ("teacher_batch_size", "batch_size")):
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[preset])
        for name in ("epochs", "teacher_epochs"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("batch_size", "teacher_batch_size"):
            if getattr(self, name) < 2:
                raise UserError(f"{name} must be at least 2 (batch norm needs two images per batch), got {getattr(self, name)}")
        if not self.teacher_lr > 0:
            raise UserError(f"teacher_lr must be > 0, got {self.teacher_lr}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise UserError(f"eval_batch_size must be at least 1, got {self.eval_batch_size}")
        if not self.lr > 0:
            raise UserError(f"lr must be > 0, got {self.lr}")
        if self.crop_pad < 0:
            raise UserError(f"crop_pad must be >= 0, got {self.crop_pad}")
        if not 0 <= self.warmup < 1:
            raise UserError(f"warmup is a share of the training steps in [0, 1), got {self.warmup}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        for name in ("head_lr", "teacher_head_lr", "data_memory_gb"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")
        for role, names in self.features.items():
            if role not in ("student", "teacher"):
                raise UserError(f"features: unknown key {role!r}: use features: {{student: [...], teacher: [...]}}")
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise UserError(f"features: {role} must be a list of module names, e.g. [layer1, layer2], got {names!r}")
        # Every setting of the method with its value, defaults included: a config (and so best/,
        # a checkpoint, MLflow's params) says which temperature and alpha a run used, and keeps
        # its meaning if a default changes later.
        from kdsearch.methods import resolve_settings  # the methods import torch: the CLI's --help must not

        object.__setattr__(self, "method_args", resolve_settings(self.method, self.method_args))

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
            out[key] = coerce(value, hints[key], f"{source}: {key}")
        return cls(**out)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> TrainConfig:
        return cls.from_dict({**read_config_yaml(path), **(overrides or {})}, source=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_config_yaml(path: str | Path) -> dict:
    """A config file's settings as written (presets not yet applied), to merge flags into."""
    values = load_yaml(path)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of settings at the top level")
    return values
