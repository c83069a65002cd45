"""The user's own images: ``data_dir/train/<class>/*`` (png, jpg, ...), optionally ``val/`` and
``test/`` beside it with the same class folders.

Every image is decoded once (centre square crop, resized to ``image_size``) into the uint8
in-memory form the other datasets use, and the result is cached atomically beside the data
(``kdsearch-cache/imagefolder-<size>-<content key>.npy``), keyed by the files' names, sizes and
times. A folder over its memory limit (``data_memory_gb``, default half the memory) is decoded
straight into that file instead and memory-mapped, its splits written beside it
(``placement.take``): it trains by streaming, and the limit is the disk. Images whose three channels are all equal are kept as one grey channel. Without
``test/`` a test split is held out of ``train/`` (``val_fraction`` of it, by ``split_seed``),
as the validation split is without ``val/``.

Multi-label: a ``labels.csv`` in ``data_dir`` (a header ``file,attr1,attr2,...``, then a path
relative to ``data_dir`` and a 0/1 per attribute) makes it a multi-label set; the split of an
image is the folder its path starts with (train/, val/ or test/).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from kdsearch.data.placement import HEADROOM, gb, mapped_file, open_mapped, write_mapped
from kdsearch.data.splits import RawDataset, hold_out
from kdsearch.errors import UserError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")


def memory_limit_bytes(memory_gb: float | None) -> tuple[int, str]:
    if memory_gb is not None:
        return int(memory_gb * 1024**3), f"data_memory_gb {memory_gb:g}"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total // 2, "half the memory; raise it with data_memory_gb"


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def _class_folders(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    train = root / "train"
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{train} has no class folders: put each class's images in train/<class>/")
    index = {name: i for i, name in enumerate(classes)}
    out = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        stray = [c for c in found if c not in index]
        if stray:
            raise UserError(f"{folder / stray[0]} is a class that train/ does not have: every split uses train/'s classes")
        out[split] = [(p, index[c]) for c in found for p in _images(folder / c)]
        if not out[split]:
            raise UserError(f"{folder} holds no images ({', '.join(sorted(SUFFIXES))})")
    return classes, out


def _labels_csv(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, np.ndarray]]]]:
    path = root / "labels.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or len(rows[0]) < 2 or rows[0][0].strip() != "file":
        raise UserError(f"{path}: expected a header 'file,<attribute>,...' and a row per image")
    names = [n.strip() for n in rows[0][1:]]
    out: dict[str, list] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(names) + 1 or any(v.strip() not in ("0", "1") for v in row[1:]):
            raise UserError(f"{path} line {number}: expected a file and {len(names)} values of 0 or 1")
        rel = Path(row[0].strip())
        split = rel.parts[0] if rel.parts and rel.parts[0] in SPLITS else "train"
        if not (root / rel).is_file():
            raise UserError(f"{path} line {number}: {root / rel} does not exist")
        out.setdefault(split, []).append((root / rel, np.array([int(v) for v in row[1:]], dtype=np.uint8)))
    if "train" not in out:
        raise UserError(f"{path} lists no training images (paths under train/)")
    return names, out


def decode(path: Path, size: int, mode: str = "RGB") -> np.ndarray:
    """One image as uint8 (C, size, size): centre square crop, bilinear resize; ``mode`` RGB or L."""
    from PIL import Image  # only where images are decoded

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
            return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    except OSError as exc:
        raise UserError(f"cannot decode {path} ({exc}): remove or replace it") from None


def _content_key(files: list[Path], size: int) -> str:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(str(size).encode())
    for p in files:
        st = p.stat()
        digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode_cached(cache: Path, files: list[Path], size: int) -> np.ndarray:
    """Every file decoded as RGB at ``size`` into one uint8 (N, 3, size, size) array, read from
    ``cache`` when it holds that many, else decoded (threads) and written there atomically."""
    if cache.is_file():
        try:
            images = np.load(cache, mmap_mode="r")
            if images.shape == (len(files), 3, size, size):
                return np.array(images)  # read into memory, writable
        except (OSError, ValueError):
            pass  # damaged: decode again
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL decodes outside the GIL
        for i, arr in enumerate(pool.map(lambda f: decode(f, size), files, chunksize=64)):
            out[i] = arr
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".tmp", delete=False) as tmp:
            np.save(tmp, out)
        os.replace(tmp.name, cache)  # atomic: a killed run never leaves half a cache
    except OSError:
        pass  # a read-only data folder only costs decoding again next time
    return out


def decode_to_disk(cache: Path, files: list[Path], size: int) -> torch.Tensor:
    """Every file decoded as RGB at ``size`` straight into the .npy file ``cache`` (written once,
    atomically; memory: a chunk of images), returned as a read-only memory map of it."""

    try:
        if np.load(cache, mmap_mode="r").shape == (len(files), 3, size, size):
            return open_mapped(cache)
    except (OSError, ValueError):
        pass  # none yet, or damaged: decode again
    cache.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL decodes outside the GIL
        write_mapped(
            cache, (len(files), 3, size, size), lambda sl: np.stack(list(pool.map(lambda f: decode(f, size), files[sl])))
        )
    return open_mapped(cache)


def _grey(x: torch.Tensor) -> bool:
    """Whether every image's three channels are equal (read a chunk at a time)."""
    return all(bool((c[:, 0] == c[:, 1]).all() and (c[:, 0] == c[:, 2]).all()) for c in torch.split(x, 4096))


def _first_channel(x: torch.Tensor, cache: Path) -> torch.Tensor:
    """The first channel of every image: in memory, or for a memory map a file beside it."""

    if mapped_file(x) is None:
        return x[:, :1].contiguous()
    grey = cache.with_name(f"{cache.stem}-grey.npy")
    if not grey.is_file():
        write_mapped(grey, (len(x), 1, *x.shape[2:]), lambda sl: x[sl, :1].numpy())
    return open_mapped(grey)


def load_imagefolder(
    data_dir: Path,
    download: bool = False,
    image_size: int = 32,
    memory_gb: float | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    *,
    to_disk: bool = False,
    **_: object,
) -> RawDataset:
    root = Path(data_dir)
    if not (root / "train").is_dir():
        raise UserError(f"{root} has no train/ folder: an image folder holds train/<class>/*.png (and optionally val/, test/)")
    if (root / "labels.csv").is_file():
        class_names, listed = _labels_csv(root)
        multilabel = True
    else:
        class_names, listed = _class_folders(root)
        multilabel = False
    files = [p for split in SPLITS for p, _ in listed.get(split, [])]
    cache = root / "kdsearch-cache" / f"imagefolder-{image_size}-{_content_key(files, image_size)}.npy"
    x = _decoded(root, files, image_size, memory_gb, cache, to_disk)
    if _grey(x):
        x = _first_channel(x, cache)  # grey images: one channel
    parts, start = {}, 0
    for split in (s for s in SPLITS if s in listed):
        entries = listed[split]
        labels = [label for _, label in entries]
        y = torch.from_numpy(np.stack(labels)) if multilabel else torch.tensor(labels, dtype=torch.int64)
        parts[split] = (x[start : start + len(entries)], y)
        start += len(entries)
    train_x, train_y = parts["train"]
    if "test" in listed:
        test_x, test_y = parts["test"]
    else:
        train_x, train_y, test_x, test_y = hold_out(train_x, train_y, val_fraction, split_seed)
    val_x, val_y = parts["val"] if "val" in listed else (None, None)
    return RawDataset(train_x, train_y, test_x, test_y, class_names, multilabel, val_x, val_y, "test" not in listed)


def _decoded(root: Path, files: list[Path], size: int, memory_gb: float | None, cache: Path, to_disk: bool) -> torch.Tensor:
    """The images decoded: in memory within ``data_memory_gb`` (default: half the memory), else
    decoded to a file on disk and memory-mapped (trained from by streaming); one line if neither.
    ``to_disk`` (data_placement stream): straight to disk, a chunk at a time, whatever fits memory."""

    need = len(files) * 3 * size * size
    limit, source = memory_limit_bytes(memory_gb)
    if need <= limit and not to_disk:
        return torch.from_numpy(decode_cached(cache, files, size))
    folder = cache.parent if cache.parent.is_dir() else root
    room = int(shutil.disk_usage(folder).free * HEADROOM) + (cache.stat().st_size if cache.is_file() else 0)
    if need > room or not os.access(folder, os.W_OK):
        where = f"the {gb(room)} free on disk under {folder}" if os.access(folder, os.W_OK) else f"{folder} is read-only"
        if to_disk:
            fits = max(1, math.isqrt(room // (3 * len(files))))
            over, fix = where, f"use image_size {fits} or less, or data_placement auto"
        else:
            fits = max(1, math.isqrt(max(limit, room) // (3 * len(files))))
            over, fix = f"the {gb(limit)} in memory ({source}) and {where}", f"use image_size {fits} or less"
        raise UserError(f"{root}: {len(files)} images at {size}x{size} would take {gb(need)} decoded, over {over}: {fix}")
    return decode_to_disk(cache, files, size)
