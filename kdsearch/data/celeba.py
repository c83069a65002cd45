"""CelebA (Liu et al. 2015): 40 binary face attributes, official train/valid/test partition.

Layout read (the official one, also what torchvision's download writes under ``celeba/``):
``img_align_celeba/*.jpg``, ``list_attr_celeba.txt``, ``list_eval_partition.txt``.
The 202,599 JPEGs are far too many to decode every epoch and too big to hold at full
size, so they are decoded once (centre square crop, resized to ``image_size``) into a
uint8 array cached beside the data, e.g. ``kdsearch-cache/celeba-64-<key of the image list>.npy`` (2.5 GB at 64x64).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from kdsearch.data.imagefolder import decode_cached
from kdsearch.data.splits import RawDataset
from kdsearch.errors import UserError

REQUIRED = ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt")


def _find_root(data_dir: Path) -> Path | None:
    for candidate in (data_dir / "celeba", data_dir):
        if all((candidate / name).exists() for name in REQUIRED):
            return candidate
    return None


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """File names, the 40 attribute names and a 0/1 uint8 matrix from list_attr_celeba.txt."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise UserError(f"{path} is too short to be list_attr_celeba.txt: re-download CelebA")
    names = lines[1].split()
    files, rows = [], []
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1 or any(v not in ("1", "-1") for v in parts[1:]):
            raise UserError(f"{path} line {number} is not a file name and {len(names)} values of 1/-1: re-download CelebA")
        files.append(parts[0])
        rows.append([v == "1" for v in parts[1:]])
    return files, names, np.asarray(rows, dtype=np.uint8).reshape(len(rows), len(names))


def read_partition(path: Path) -> dict[str, int]:
    partition = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise UserError(f"{path} line {number} is not '<file> 0|1|2': re-download CelebA")
        partition[parts[0]] = int(parts[1])
    return partition


def _cached_images(root: Path, files: list[str], size: int) -> np.ndarray:
    # Keyed by the image list too: another list (a subset, a new release) is decoded anew.
    key = hashlib.blake2b("\n".join(files).encode(), digest_size=6).hexdigest()
    cache = root / "kdsearch-cache" / f"celeba-{size}-{key}.npy"
    return decode_cached(cache, [root / "img_align_celeba" / f for f in files], size)


def load_celeba(data_dir: Path, download: bool = False, image_size: int = 64, **_: object) -> RawDataset:
    root = _find_root(data_dir)
    if root is None and download:
        import torchvision  # only to download: reading the files needs none of it

        torchvision.datasets.CelebA(root=str(data_dir), split="all", target_type="attr", download=True)
        root = _find_root(data_dir)
    if root is None:
        raise UserError(
            f"CelebA not found in {data_dir} or {data_dir / 'celeba'}: expected {', '.join(REQUIRED)}; "
            "pass --data-dir to the folder that holds them, or add --download"
        )
    files, names, attrs = read_attributes(root / "list_attr_celeba.txt")
    partition = read_partition(root / "list_eval_partition.txt")
    missing = [f for f in files if f not in partition]
    if missing:
        raise UserError(f"{missing[0]} has attributes but no entry in list_eval_partition.txt: re-download CelebA")
    images = torch.from_numpy(_cached_images(root, files, image_size))
    labels = torch.from_numpy(attrs)
    split = torch.tensor([partition[f] for f in files])
    parts = [torch.nonzero(split == k).flatten() for k in range(3)]
    if any(len(p) == 0 for p in parts):
        raise UserError(f"{root / 'list_eval_partition.txt'} leaves the train, valid or test split empty: re-download CelebA")
    train, val, test = parts
    return RawDataset(
        train_x=images[train],
        train_y=labels[train],
        val_x=images[val],
        val_y=labels[val],
        test_x=images[test],
        test_y=labels[test],
        class_names=names,
        multilabel=True,
    )
