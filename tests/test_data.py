"""Every loader reads files the tests write in the dataset's real on-disk format."""

import pickle

import numpy as np
import pytest
import torch
from conftest import write_celeba, write_cifar10, write_cifar100, write_fashion_mnist

from kdsearch.data import DATASETS, load_dataset
from kdsearch.data.fashion_mnist import read_idx
from kdsearch.data.pipeline import DeviceData, view_params
from kdsearch.errors import UserError


def test_cifar10_reads_python_batches(tmp_path):
    folder = write_cifar10(tmp_path)
    data = load_dataset("cifar10", tmp_path, val_fraction=0.1)
    assert data.sizes() == {"train": 90, "val": 10, "test": 20}
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape[1:] == (3, 32, 32)
    assert data.class_names[0] == "airplane" and not data.multilabel
    # pixels land in (C, H, W) order: row-major 1024 red values, then green, then blue
    raw = pickle.loads((folder / "test_batch").read_bytes())[b"data"]
    assert torch.equal(data.test_x[3, 1, 0], torch.from_numpy(raw[3, 1024:1056]))
    assert data.test_y.tolist() == list(range(10)) * 2


def test_cifar100_reads_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    data = load_dataset("cifar100", tmp_path)
    assert data.num_outputs == 100 and len(data.test_x) == 20 and data.class_names[5] == "class5"


def test_cifar_batch_with_code_is_refused(tmp_path):
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(UserError, match="not a CIFAR python batch"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, gz):
    write_fashion_mnist(tmp_path / "fm", gz=gz)
    data = load_dataset("fashion_mnist", tmp_path / "fm", val_fraction=0.2)
    assert data.sizes() == {"train": 40, "val": 10, "test": 20}
    assert data.train_x.shape[1:] == (1, 28, 28) and data.class_names[-1] == "Ankle boot"


def test_fashion_mnist_in_torchvision_layout(tmp_path):
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    assert len(load_dataset("fashion_mnist", tmp_path).test_x) == 20


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    write_fashion_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UserError, match="is truncated"):
        read_idx(path)


def test_celeba_reads_official_layout_and_caches_decoded_images(tmp_path):
    folder, attrs = write_celeba(tmp_path)
    data = load_dataset("celeba", tmp_path, image_size=16)
    assert data.multilabel and data.num_outputs == 40 and data.class_names[-1] == "Young"
    assert data.sizes() == {"train": 16, "val": 4, "test": 4}  # the official partition, not a random split
    assert data.train_x.shape[1:] == (3, 16, 16)
    assert torch.equal(data.train_y, torch.from_numpy((attrs[:16] == 1).astype(np.uint8)))
    bright = data.train_x.float().mean(dim=(1, 2, 3)) > 128
    assert torch.equal(bright, data.train_y[:, 0].bool())
    assert len(list((folder / "kdsearch-cache").glob("celeba-16-*.npy"))) == 1
    (folder / "img_align_celeba" / "000001.jpg").unlink()  # the second load needs no JPEG
    assert torch.equal(load_dataset("celeba", tmp_path, image_size=16).train_x, data.train_x)


def test_digits_validation_split_is_fixed_by_split_seed():
    a = load_dataset("digits", val_fraction=0.1, split_seed=0)
    b = load_dataset("digits", val_fraction=0.1, split_seed=0)
    c = load_dataset("digits", val_fraction=0.1, split_seed=1)
    assert a.sizes() == {"train": 1293, "val": 144, "test": 360}
    assert torch.equal(a.val_x, b.val_x) and not torch.equal(a.val_x, c.val_x)
    assert torch.equal(a.test_x, c.test_x)  # test never moves
    assert set(a.val_y.tolist()) == set(range(10))
    assert 0 < a.mean[0] < 1 and 0 < a.std[0] < 1


def test_train_subset_is_a_seeded_subset():
    a = load_dataset("digits", train_subset=300)
    assert len(a.train_x) == 300 and len(a.val_x) == 144
    assert torch.equal(a.train_x, load_dataset("digits", train_subset=300).train_x)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashion_mnist", "celeba"])
def test_missing_dataset_names_the_path_and_the_fix(tmp_path, name, monkeypatch):
    monkeypatch.setattr("kdsearch.data.fashion_mnist.SYSTEM_DIR", tmp_path / "none")
    with pytest.raises(UserError) as err:
        load_dataset(name, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and ("--download" in msg or "dataset-fashion-mnist" in msg)


def test_bad_data_dir_and_unknown_dataset():
    with pytest.raises(UserError, match="data directory /no/such/dir does not exist"):
        load_dataset("cifar10", "/no/such/dir")
    with pytest.raises(UserError, match=f"unknown dataset 'mnist': choose one of {', '.join(sorted(DATASETS))}"):
        load_dataset("mnist")


@pytest.mark.parametrize("pad", [0, 2])
def test_crop_flip_matches_a_per_image_reference(pad):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8)
    dy, dx, flips = view_params(6, seed=3, epoch=1, pad=pad, flip=True)
    data = DeviceData(x, torch.zeros(6), (0.5,) * 3, (0.5,) * 3, torch.device("cpu"), pad=pad)
    assert torch.equal(data.x, x)
    out = data.augmented(torch.arange(6), dy, dx, flips)
    assert out.shape == x.shape and bool(flips.any()) and not bool(flips.all())
    for i in range(6):
        padded = torch.nn.functional.pad(x[i], (pad, pad, pad, pad))
        ref = padded[:, dy[i] : dy[i] + 5, dx[i] : dx[i] + 7]
        if flips[i]:
            ref = ref.flip(2)
        assert torch.equal(out[i], ref)


def test_views_are_a_function_of_seed_epoch_and_index():
    a = view_params(100, seed=1, epoch=2, pad=4, flip=True)
    b = view_params(100, seed=1, epoch=2, pad=4, flip=True)
    c = view_params(100, seed=1, epoch=3, pad=4, flip=True)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert int(a[0].max()) <= 8 and int(a[0].min()) >= 0 and 20 < int(a[2].sum()) < 80


def test_device_batches_cover_each_image_once_per_epoch():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    data = DeviceData(x, torch.arange(10), (0.0,), (1 / 255,), torch.device("cpu"))
    seen = torch.cat([idx for _, _, idx in data.train_batches(4, seed=0, epoch=0, flip=False)])
    assert sorted(seen.tolist()) == list(range(10)) and data.num_batches(4) == 3  # last batch of 2 kept (>= half)
    batches = list(data.train_batches(4, seed=0, epoch=0, flip=False))
    images, targets, idx = batches[0]
    assert torch.equal(images[:, 0, 0, 0], idx.float()) and torch.equal(targets, idx)
    # A last batch of one image joins the one before it: every image is seen, batch norm never sees 1.
    sizes = [len(i) for _, _, i in data.train_batches(3, 0, 0, False)]
    assert data.num_batches(3) == 3 and sizes == [3, 3, 4]


@pytest.mark.parametrize("n, batch_size", [(10, 1), (10, 2), (10, 64), (7, 3), (1000, 128)])
def test_every_epoch_sees_every_image_for_any_batch_size(n, batch_size):
    x = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    data = DeviceData(x, torch.arange(n), (0.0,), (1.0,), torch.device("cpu"))
    batches = [idx for _, _, idx in data.train_batches(batch_size, seed=0, epoch=0, flip=False)]
    assert sorted(torch.cat(batches).tolist()) == list(range(n))
    assert len(batches) == data.num_batches(batch_size) and (batch_size == 1 or min(len(b) for b in batches) >= 2)


def test_fashion_mnist_resized_to_image_size(tmp_path):
    write_fashion_mnist(tmp_path / "fm")
    plain = load_dataset("fashion_mnist", tmp_path / "fm", val_fraction=0.2)
    data = load_dataset("fashion_mnist", tmp_path / "fm", val_fraction=0.2, image_size=32)
    assert data.train_x.shape[1:] == (1, 32, 32) and data.test_x.shape[1:] == (1, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.sizes() == plain.sizes()
    # a smooth resize: the mean brightness of each image stays within a few levels
    assert (data.train_x.float().mean((1, 2, 3)) - plain.train_x.float().mean((1, 2, 3))).abs().max() < 3
    with pytest.raises(UserError, match="image_size 4 is too small"):
        load_dataset("fashion_mnist", tmp_path / "fm", image_size=4)


def _counts(*tensors):
    from collections import Counter

    return Counter(bytes(image.numpy().tobytes()) for t in tensors for image in t)


@pytest.mark.parametrize("split_seed, val_fraction", [(0, 0.1), (3, 0.25)])
def test_train_val_and_test_partition_the_images(split_seed, val_fraction, tmp_path):
    """Every image lands in exactly one split (counted with multiplicity, digits has duplicates):
    digits (its test held out by sklearn), tensors and an image folder (test held out by split_seed)."""
    from conftest import write_image_folder
    from sklearn.datasets import load_digits

    from kdsearch import DatasetSplits
    from kdsearch.data.imagefolder import decode

    digits = load_dataset("digits", val_fraction=val_fraction, split_seed=split_seed)
    original = torch.from_numpy(np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    assert _counts(digits.train_x, digits.val_x, digits.test_x) == _counts(original)

    images = torch.stack([torch.full((1, 2, 2), 0, dtype=torch.uint8) + i % 256 for i in range(500)])
    images[:, 0, 0, 0] = torch.arange(500) // 256  # every image distinct
    labels = torch.arange(500) % 5
    own = DatasetSplits.from_tensors(images, labels, val_fraction=val_fraction, split_seed=split_seed)
    assert _counts(own.train_x, own.val_x, own.test_x) == _counts(images)
    assert min(own.sizes().values()) > 0

    written = write_image_folder(tmp_path / "folder", per_class=20)
    folder = load_dataset("imagefolder", tmp_path / "folder", image_size=8, val_fraction=val_fraction, split_seed=split_seed)
    mode = "L" if folder.in_channels == 1 else "RGB"
    files = [torch.from_numpy(decode(tmp_path / "folder" / name, 8, mode)) for name in written]
    assert _counts(folder.train_x, folder.val_x, folder.test_x) == _counts(torch.stack(files))
    assert folder.split["test"] == "held out by split_seed" and min(folder.sizes().values()) > 0
