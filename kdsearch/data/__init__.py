"""Dataset registry: every loader returns uint8 images in memory, split into
train / fixed-seed validation / test (see ``splits.make_splits``)."""

from __future__ import annotations

import os
from pathlib import Path

from kdsearch.data.celeba import load_celeba
from kdsearch.data.cifar import load_cifar10, load_cifar100
from kdsearch.data.digits import load_digits
from kdsearch.data.fashion_mnist import load_fashion_mnist
from kdsearch.data.imagefolder import load_imagefolder
from kdsearch.data.splits import DatasetSplits, make_splits
from kdsearch.errors import UserError, lookup

DATASETS = {
    "digits": load_digits,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "fashion_mnist": load_fashion_mnist,
    "celeba": load_celeba,
    "imagefolder": load_imagefolder,
}


def default_data_dir() -> Path:
    return Path(os.environ.get("KDSEARCH_DATA", "data"))


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    image_size: int | None = None,
    *,
    train_subset: int | None = None,
    memory_gb: float | None = None,
    to_disk: bool = False,
) -> DatasetSplits:
    """Load a dataset into memory as uint8 tensors with its train/val/test splits; ``to_disk``
    (data_placement stream): an image folder is decoded straight to a memory-mapped file."""
    loader = lookup(DATASETS, name, "dataset")
    if name == "imagefolder" and data_dir is None:
        raise UserError("dataset imagefolder reads your images: pass --data-dir FOLDER holding train/<class>/*.png")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if data_dir is not None and not root.is_dir() and not download:
        raise UserError(f"data directory {root} does not exist: pass an existing --data-dir, or add --download")
    if download:
        root.mkdir(parents=True, exist_ok=True)
    kwargs = {"image_size": image_size} if image_size else {}
    raw = loader(
        root, download=download, memory_gb=memory_gb, val_fraction=val_fraction, split_seed=split_seed, to_disk=to_disk, **kwargs
    )
    try:
        return make_splits(name, raw, val_fraction, split_seed, train_subset)
    except ValueError as exc:
        raise UserError(f"{name}: {exc}; choose val_fraction between 0 and 1") from None


def load_data(cfg) -> DatasetSplits:
    """The dataset a ``TrainConfig`` names, with its splits."""
    return load_dataset(
        cfg.dataset,
        cfg.data_dir,
        cfg.download,
        cfg.val_fraction,
        cfg.split_seed,
        cfg.image_size,
        train_subset=cfg.train_subset,
        memory_gb=cfg.data_memory_gb,
        to_disk=cfg.data_placement == "stream",
    )
