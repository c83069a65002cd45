"""Fashion-MNIST (Xiao et al. 2017) from its IDX files, gzipped or not.

Searched in ``<data-dir>``, ``<data-dir>/fashion-mnist``, torchvision's
``<data-dir>/FashionMNIST/raw`` and Debian's ``/usr/share/datasets/fashion-mnist``
(package dataset-fashion-mnist). ``image_size`` resizes the 28x28 images (e.g. 32 for
CIFAR-shaped models and benchmarks); the default keeps them as they are.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from kdsearch.data.splits import RawDataset
from kdsearch.errors import UserError

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (magic 0x0000 08 <ndim>, big-endian dims)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path} ({exc}): re-download the dataset") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes: re-download the dataset")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - header != expected:
        raise UserError(f"{path} is truncated: header says {dims}, file holds {len(data) - header} bytes of data; re-download it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_file(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _search_dirs(data_dir: Path) -> list[Path]:
    return [data_dir, data_dir / "fashion-mnist", data_dir / "FashionMNIST" / "raw", SYSTEM_DIR]


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) images resized to (size, size), bilinear with antialiasing, in chunks."""
    if size < 8:
        raise UserError(f"image_size {size} is too small for the models: use 8 or more (Fashion-MNIST is 28x28)")
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for i in range(0, len(images), 8192):
        chunk = torch.nn.functional.interpolate(images[i : i + 8192].float(), size=(size, size), mode="bilinear", antialias=True)
        out[i : i + 8192] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_fashion_mnist(data_dir: Path, download: bool = False, image_size: int | None = None, **_: object) -> RawDataset:
    dirs = _search_dirs(data_dir)
    if _find_file(dirs, FILES["train_x"]) is None and download:
        import torchvision  # only to download: reading the files needs none of it

        torchvision.datasets.FashionMNIST(root=str(data_dir), download=True)
    paths = {}
    for key, stem in FILES.items():
        path = _find_file(dirs, stem)
        if path is None:
            raise UserError(
                f"Fashion-MNIST file {stem}[.gz] not found in {data_dir} or {SYSTEM_DIR}: "
                "pass --data-dir to the folder holding the IDX files, add --download, "
                "or apt-get install dataset-fashion-mnist"
            )
        paths[key] = path
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"Fashion-MNIST {split} images {x.shape} and labels {y.shape} do not match: re-download the dataset")
        if len(y) and y.max() >= len(CLASS_NAMES):
            raise UserError(f"Fashion-MNIST {split} labels go up to {y.max()}, expected 0-9: re-download the dataset")
    train_x = torch.from_numpy(arrays["train_x"].copy())[:, None]
    test_x = torch.from_numpy(arrays["test_x"].copy())[:, None]
    if image_size:
        train_x, test_x = resize(train_x, image_size), resize(test_x, image_size)
    return RawDataset(
        train_x=train_x,
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=test_x,
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
        class_names=list(CLASS_NAMES),
    )
