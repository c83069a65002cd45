"""CIFAR-10 and CIFAR-100 from their standard "python version" pickled batches.

Layout read (the one the official archives and torchvision's download produce):
``<data-dir>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``<data-dir>/cifar-100-python/{train, test, meta}``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from kdsearch.data.splits import RawDataset
from kdsearch.errors import UserError

# The batches are pickles; unpickle only what they contain (numpy arrays, lists, bytes),
# so a tampered file cannot run code.
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a CIFAR python batch ({exc}): re-extract the dataset archive") from None
    if not isinstance(entry, dict):
        raise UserError(f"{path} is not a CIFAR python batch: re-extract the dataset archive")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _images(batch: dict, path: Path) -> np.ndarray:
    data = np.asarray(batch.get("data"), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path} holds data of shape {data.shape}, expected (N, 3072): re-extract the dataset archive")
    return data.reshape(-1, 3, 32, 32)


def _find(data_dir: Path, folder: str, marker: str) -> Path | None:
    for candidate in (data_dir / folder, data_dir):
        if (candidate / marker).is_file():
            return candidate
    return None


def _locate(data_dir: Path, folder: str, marker: str, download: bool, tv_name: str, label: str) -> Path:
    root = _find(data_dir, folder, marker)
    if root is None and download:
        import torchvision  # only to download: reading the files needs none of it

        getattr(torchvision.datasets, tv_name)(root=str(data_dir), download=True)
        root = _find(data_dir, folder, marker)
    if root is None:
        raise UserError(
            f"{label} not found: expected {data_dir / folder / marker}; "
            f"pass --data-dir pointing at the folder that holds {folder}/, or add --download"
        )
    return root


def _to_raw(train: list[tuple[dict, Path]], test: tuple[dict, Path], label_key: str, names: list[str]) -> RawDataset:
    train_x = np.concatenate([_images(b, p) for b, p in train])
    train_y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b, _ in train])
    test_x = _images(*test)
    test_y = np.asarray(test[0][label_key], dtype=np.int64)
    for y, n in ((train_y, len(train_x)), (test_y, len(test_x))):
        if len(y) != n or (len(y) and (y.min() < 0 or y.max() >= len(names))):
            raise UserError(f"labels do not match images or classes in {test[1].parent}: re-extract the dataset archive")
    return RawDataset(
        train_x=torch.from_numpy(train_x),
        train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y),
        class_names=names,
    )


def load_cifar10(data_dir: Path, download: bool = False, **_: object) -> RawDataset:
    root = _locate(data_dir, "cifar-10-batches-py", "data_batch_1", download, "CIFAR10", "CIFAR-10")
    train = []
    for i in range(1, 6):
        path = root / f"data_batch_{i}"
        if not path.is_file():
            raise UserError(f"CIFAR-10 is incomplete: {path} is missing; re-extract the dataset archive")
        train.append((_read_batch(path), path))
    test_path = root / "test_batch"
    if not test_path.is_file():
        raise UserError(f"CIFAR-10 is incomplete: {test_path} is missing; re-extract the dataset archive")
    meta_path = root / "batches.meta"
    names = [n.decode() for n in _read_batch(meta_path)["label_names"]] if meta_path.is_file() else [str(i) for i in range(10)]
    return _to_raw(train, (_read_batch(test_path), test_path), "labels", names)


def load_cifar100(data_dir: Path, download: bool = False, **_: object) -> RawDataset:
    root = _locate(data_dir, "cifar-100-python", "train", download, "CIFAR100", "CIFAR-100")
    train_path, test_path, meta_path = root / "train", root / "test", root / "meta"
    if not test_path.is_file():
        raise UserError(f"CIFAR-100 is incomplete: {test_path} is missing; re-extract the dataset archive")
    names = (
        [n.decode() for n in _read_batch(meta_path)["fine_label_names"]] if meta_path.is_file() else [str(i) for i in range(100)]
    )
    return _to_raw([(_read_batch(train_path), train_path)], (_read_batch(test_path), test_path), "fine_labels", names)
