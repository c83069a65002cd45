"""The in-memory form every dataset is loaded into, and the fixed-seed validation split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from kdsearch.data.placement import take
from kdsearch.errors import UserError


@dataclass
class RawDataset:
    """What a loader returns: uint8 images (N, C, H, W) and labels, train and test.

    Labels are int64 class indices, or uint8 0/1 attribute matrices (N, K) when
    ``multilabel``. ``val_x``/``val_y`` are set only where the dataset has an official
    validation split (CelebA); otherwise one is held out of train.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    multilabel: bool = False
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    test_from_train: bool = False  # the test split was held out of train by split_seed (not the dataset's own)


HELD_OUT, OWN = "held out by split_seed", "the dataset's own"


@dataclass
class DatasetSplits:
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    multilabel: bool
    # Per-channel statistics of the training images in [0, 1] units, used to normalise.
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    # Which images are validation and test: {"val_fraction", "split_seed", "val", "test"}, where
    # val/test say "held out by split_seed" or "the dataset's own". Checkpoints record it.
    split: dict = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_x), "val": len(self.val_x), "test": len(self.test_x)}

    def fingerprint(self) -> str:
        """A short hash of the training split: its shape, its labels and up to 4,096 of its images
        spread over it (cheap for CelebA's 160,000, and any other subset or split differs)."""
        digest = hashlib.blake2b(digest_size=12)
        digest.update(repr((tuple(self.train_x.shape), tuple(self.train_y.shape))).encode())
        step = max(1, len(self.train_x) // 4096)
        digest.update(self.train_x[::step].contiguous().numpy().tobytes())
        digest.update(self.train_y.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def verify_sample(self, max_images: int = 512, max_bytes: int = 4 << 20) -> dict:
        """The first validation images (uint8) and labels, at most ``max_images`` or ``max_bytes``:
        what an export is checked against where the data set is not (a copied sweep folder)."""
        per_image = max(1, self.val_x[:1].numel())
        n = max(1, min(max_images, len(self.val_x), max_bytes // per_image))
        return {"x": self.val_x[:n].clone(), "y": self.val_y[:n].clone(), "of": len(self.val_x)}

    @classmethod
    def from_tensors(
        cls,
        train_x,
        train_y,
        test_x=None,
        test_y=None,
        *,
        val_x=None,
        val_y=None,
        class_names: list[str] | None = None,
        multilabel: bool = False,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        name: str = "tensors",
    ) -> DatasetSplits:
        """Splits from images in memory: (N, C, H, W) or (N, H, W), uint8 or floats in [0, 1]
        (tensors or arrays); labels are class indices, or (N, K) 0/1 when ``multilabel``. Without
        a test (or validation) split one is held out of train by ``split_seed``."""
        x, y = as_images(train_x, "train_x"), as_labels(train_y, multilabel, "train_y")
        if len(x) != len(y):
            raise UserError(f"train_x has {len(x)} images but train_y {len(y)} labels")
        held_out = test_x is None
        if held_out:
            x, y, tx, ty = hold_out(x, y, val_fraction, split_seed)
        else:
            tx, ty = as_images(test_x, "test_x"), as_labels(test_y, multilabel, "test_y")
        vx = as_images(val_x, "val_x") if val_x is not None else None
        vy = as_labels(val_y, multilabel, "val_y") if val_y is not None else None
        if class_names is None:
            k = int(y.shape[1]) if multilabel else int(y.max()) + 1
            class_names = [str(i) for i in range(k)]
        raw = RawDataset(x, y, tx, ty, list(class_names), multilabel, vx, vy, test_from_train=held_out)
        try:
            return make_splits(name, raw, val_fraction, split_seed)
        except ValueError as exc:
            raise UserError(f"{name}: {exc}") from None

    @classmethod
    def from_folder(
        cls,
        path,
        image_size: int = 32,
        *,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        memory_gb: float | None = None,
    ) -> DatasetSplits:
        """Splits from an image folder (``path/train/<class>/*``; see ``kdsearch.data.imagefolder``)."""
        from kdsearch.data import load_dataset  # the package imports this module: its registry is complete only after

        return load_dataset("imagefolder", path, False, val_fraction, split_seed, image_size, memory_gb=memory_gb)

    def info(self) -> dict:
        """What a checkpoint records about the data its model expects."""
        return {
            "name": self.name,
            "image_size": list(self.image_size),
            "in_channels": self.in_channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": self.class_names,
            "multilabel": self.multilabel,
            "split": dict(self.split),
        }


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units, computed in chunks."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for chunk in torch.split(x, 4096):
        f = chunk.to(torch.float64) / 255.0
        total += f.sum(dim=(0, 2, 3))
        total_sq += (f * f).sum(dim=(0, 2, 3))
        count += f.numel() // c
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def make_splits(
    name: str, raw: RawDataset, val_fraction: float, split_seed: int, train_subset: int | None = None
) -> DatasetSplits:
    """Hold a fixed-seed validation split out of train (unless the dataset has its own).

    ``split_seed`` is separate from the training seed so that every trial and every
    seed of a benchmark is selected on the same validation images.
    """
    if raw.val_x is not None:
        train_x, train_y, val_x, val_y = raw.train_x, raw.train_y, raw.val_x, raw.val_y
    else:
        n = len(raw.train_x)
        n_val = int(round(n * val_fraction))
        if not 0 < n_val < n:
            raise ValueError(f"val_fraction {val_fraction} leaves no validation or no training images out of {n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
        val_idx, train_idx = order[:n_val], order[n_val:]
        train_x, train_y = take(raw.train_x, train_idx), raw.train_y[train_idx]
        val_x, val_y = take(raw.train_x, val_idx), raw.train_y[val_idx]
    if train_subset is not None and train_subset < len(train_x):
        # Already in a seeded random order for held-out splits; take a seeded subset otherwise.
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(split_seed + 1))[:train_subset]
        train_x, train_y = take(train_x, pick), train_y[pick]
    mean, std = channel_stats(train_x)
    return DatasetSplits(
        name=name,
        train_x=train_x.contiguous(),
        train_y=train_y.contiguous(),
        val_x=val_x.contiguous(),
        val_y=val_y.contiguous(),
        test_x=raw.test_x.contiguous(),
        test_y=raw.test_y.contiguous(),
        class_names=list(raw.class_names),
        multilabel=raw.multilabel,
        mean=mean,
        std=std,
        split={
            "val_fraction": val_fraction,
            "split_seed": split_seed,
            "val": HELD_OUT if raw.val_x is None else OWN,
            "test": HELD_OUT if raw.test_from_train else OWN,
        },
    )


def as_images(x, what: str) -> torch.Tensor:
    """uint8 (N, C, H, W) from tensors or arrays, uint8 or floats in [0, 1], with or without C."""
    x = torch.as_tensor(x)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise UserError(f"{what} must be images (N, C, H, W) or (N, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point() or x.min() < 0 or x.max() > 1:
        raise UserError(f"{what} must be uint8, or floats in [0, 1] (got {x.dtype}): scale your images")
    return (x * 255).round().to(torch.uint8).contiguous()


def as_labels(y, multilabel: bool, what: str) -> torch.Tensor:
    y = torch.as_tensor(y)
    if multilabel:
        if y.dim() != 2:
            raise UserError(f"{what} of a multi-label set must be (N, attributes) of 0/1, got shape {tuple(y.shape)}")
        return y.to(torch.uint8).contiguous()
    if y.dim() != 1 or y.is_floating_point():
        raise UserError(f"{what} must be class indices (N,), got {y.dtype} of shape {tuple(y.shape)}")
    return y.to(torch.int64).contiguous()


def hold_out(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int):
    """A seeded share of (x, y) held out as a test split (in another order than validation's)."""
    n = len(x)
    n_out = int(round(n * fraction))
    if not 0 < n_out < n:
        raise UserError(f"{n} training images are too few to hold out a test split of {fraction:g}: give a test split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    return take(x, order[n_out:]), y[order[n_out:]], take(x, order[:n_out]), y[order[:n_out]]
