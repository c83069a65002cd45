"""The user's own images (dataset: imagefolder), data from tensors, and the Python API's sweep."""

import csv
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import file_behind, write_image_folder
from sklearn.datasets import load_digits

import kdsearch
from kdsearch import DatasetSplits, TrainConfig, UserError
from kdsearch.api import load_data
from kdsearch.data import imagefolder

write_folder = write_image_folder


def folder_config(root, **kw):
    return TrainConfig(dataset="imagefolder", data_dir=str(root), image_size=16, **kw)


def test_an_image_folder_is_decoded_once_with_classes_from_its_folders(tmp_path, monkeypatch):
    write_folder(tmp_path, per_class=20)
    data = load_data(folder_config(tmp_path))
    assert data.class_names == ["one", "two", "zero"]  # sorted folder names, as torchvision's ImageFolder
    assert data.in_channels == 1 and data.image_size == (16, 16)  # grey PNGs stay one channel
    sizes = data.sizes()
    assert sum(sizes.values()) == 60 and sizes["test"] == 6 and sizes["val"] == 5  # test, then val held out of train
    assert len(list((tmp_path / "kdsearch-cache").glob("imagefolder-16-*.npy"))) == 1
    monkeypatch.setattr(imagefolder, "decode", lambda *a: pytest.fail("decoded again despite the cache"))
    again = load_data(folder_config(tmp_path))
    assert torch.equal(again.train_x, data.train_x) and again.fingerprint() == data.fingerprint()


def test_val_and_test_folders_are_used_and_colour_is_kept(tmp_path):
    write_folder(tmp_path, splits=("train", "val", "test"), colour=True)
    data = load_data(folder_config(tmp_path))
    assert data.in_channels == 3 and data.sizes() == {"train": 36, "val": 9, "test": 9}


def test_a_labels_csv_makes_a_multilabel_set(tmp_path):
    written = write_folder(tmp_path, per_class=10)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["file", "round", "odd"])
        for path, label in written.items():
            out.writerow([path, int(label in (0,)), int(label == 1)])
    data = load_data(folder_config(tmp_path))
    assert data.multilabel and data.class_names == ["round", "odd"] and data.train_y.shape[1] == 2
    result = kdsearch.fit(folder_config(tmp_path, method="ce", epochs=1, threads=2), data=data, measure_speed=False)
    assert 0 <= result.metrics["test/acc"] <= 1


@pytest.mark.parametrize("colour", [False, True])
def test_a_folder_over_its_memory_limit_is_decoded_to_disk_and_trains_streamed(tmp_path, colour):
    write_folder(tmp_path, colour=colour)
    asked = load_data(folder_config(tmp_path, data_placement="stream"))  # fits memory, but stream was asked for
    in_memory = load_data(folder_config(tmp_path))
    on_disk = load_data(folder_config(tmp_path, data_memory_gb=2e-5))  # 21 KB: the 36 images take 27 KB decoded
    cache = (tmp_path / "kdsearch-cache").resolve()
    for split in ("train_x", "val_x", "test_x"):  # every split a file on disk (the kernel's word), the same images
        for streamed in (on_disk, asked):
            assert Path(file_behind(getattr(streamed, split)) or "/").parent == cache, split
            assert torch.equal(getattr(streamed, split), getattr(in_memory, split))
        assert file_behind(getattr(in_memory, split)) is None
    assert on_disk.in_channels == (3 if colour else 1) and on_disk.fingerprint() == in_memory.fingerprint()
    assert load_data(folder_config(tmp_path, data_memory_gb=2e-5)).train_x.numel()  # a second load maps the same files
    logs = []
    cfg = folder_config(tmp_path, data_memory_gb=2e-5, method="ce", epochs=2, threads=2, data_placement="auto")
    streamed = kdsearch.fit(cfg, data=on_disk, measure_speed=False, evaluate_test=False, log=logs.append)
    assert any(line.startswith("data placement: stream") for line in logs), logs  # already on disk: trained from there
    kept = kdsearch.fit(
        folder_config(tmp_path, method="ce", epochs=2, threads=2, data_placement="host"),
        data=in_memory,
        measure_speed=False,
        evaluate_test=False,
    )
    assert streamed.metrics["val/acc"] == kept.metrics["val/acc"]


def test_a_folder_too_big_for_memory_and_disk_says_which_image_size_fits(tmp_path, monkeypatch):
    write_folder(tmp_path)
    full = imagefolder.shutil.disk_usage(tmp_path)._replace(free=10_000)
    monkeypatch.setattr(imagefolder.shutil, "disk_usage", lambda _: full)
    with pytest.raises(UserError) as err:
        load_data(folder_config(tmp_path, data_memory_gb=2e-5))
    message = str(err.value)
    assert message.startswith(
        f"{tmp_path}: 36 images at 16x16 would take 0.03 MB decoded, over the 0.02 MB in memory (data_memory_gb 2e-05) "
        f"and the 0.01 MB free on disk under {tmp_path}: "
    )
    assert message.endswith("use image_size 14 or less")  # 36 x 3 x 14 x 14 = 21,168 bytes <= 21,474


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "has no train/ folder: an image folder holds train/<class>/"),
        (lambda root: (root / "train").mkdir(), "has no class folders: put each class's images in train/<class>/"),
        (
            lambda root: (write_folder(root), (root / "val" / "seven").mkdir(parents=True)),
            "is a class that train/ does not have",
        ),
        (
            lambda root: (write_folder(root), (root / "train" / "zero" / "9.png").write_bytes(b"not a png")),
            "cannot decode",
        ),
    ],
)
def test_a_broken_folder_is_one_line(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(UserError, match=message):
        load_data(folder_config(tmp_path))


def test_imagefolder_needs_a_data_dir():
    with pytest.raises(UserError, match="dataset imagefolder reads your images: pass --data-dir FOLDER"):
        load_data(TrainConfig(dataset="imagefolder"))


def test_data_from_tensors_and_folders_trains_with_fit(tmp_path):
    digits = load_digits()
    x = torch.from_numpy(digits.images / 16.0).float()  # floats in [0, 1], (N, H, W)
    data = DatasetSplits.from_tensors(x, torch.from_numpy(digits.target), name="my-digits")
    assert data.in_channels == 1 and data.sizes() == {"train": 1455, "val": 162, "test": 180}
    result = kdsearch.fit(TrainConfig(method="ce", epochs=2, threads=2), data=data, measure_speed=False)
    assert result.metrics["test/acc"] > 0.5 and result.data_info["name"] == "my-digits"
    write_folder(tmp_path)
    assert DatasetSplits.from_folder(tmp_path, image_size=12).image_size == (12, 12)
    with pytest.raises(UserError, match=r"train_x must be uint8, or floats in \[0, 1\]"):
        DatasetSplits.from_tensors(x * 16, torch.from_numpy(digits.target))


@pytest.mark.slow
def test_the_python_api_sweeps_a_users_model_teacher_and_data(tmp_path, monkeypatch, local_ray):
    code = tmp_path / "code"
    code.mkdir()
    (code / "notebook_nets.py").write_text(
        textwrap.dedent("""
        from torch import nn

        def small_cnn(num_classes, in_channels, width=8):
            return nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
            )
        """)
    )
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "images", per_class=30)
    data = DatasetSplits.from_folder(tmp_path / "images", image_size=8)
    teacher = kdsearch.fit(TrainConfig(method="ce", student="resnet8", epochs=3, threads=2), data=data).student
    space = {
        "name": "api",
        "fixed": {"method": "kd", "student": "notebook_nets:small_cnn", "epochs": 2, "cache_dir": str(tmp_path / "cache")},
        "space": {"temperature": {"choice": [2.0, 4.0]}},
        "search": {"num_samples": 2, "scheduler": "fifo", "seed": 0},
    }
    result = kdsearch.sweep(space, data=data, teacher=teacher, storage=str(tmp_path / "sweeps"), log=lambda _: None, verbose=0)
    assert len(result.trials) == 2 and result.checkpoint.is_file() and len(result.run_id) == 32
    assert result.best_config["student"] == "notebook_nets:small_cnn" and 0 <= result.best_metrics["test/acc"] <= 1
    with pytest.raises(UserError, match="unknown option 'samples'"):
        kdsearch.sweep(space, data=data, samples=3)


def test_a_folder_on_disk_is_never_copied_whole_by_the_teacher_its_outputs_or_the_test(tmp_path, monkeypatch):
    # Over its memory limit the folder is a file on disk; the teacher's training and measurement,
    # its shared outputs, the student's run and its test all read it a batch at a time.
    from kdsearch.data.pipeline import DeviceData
    from kdsearch.data.placement import mapped_file
    from kdsearch.teacher.outputs import compute_shared_outputs
    from kdsearch.teacher.weights import get_teacher

    write_folder(tmp_path / "images", per_class=20)
    cfg = folder_config(tmp_path / "images", data_memory_gb=2e-5, method="kd", teacher="resnet8", teacher_epochs=1, epochs=1)
    cfg = TrainConfig(**{**cfg.to_dict(), "threads": 2, "cache_dir": str(tmp_path / "cache")})
    data = load_data(cfg)
    assert file_behind(data.train_x) is not None
    copied, original = [], DeviceData.__init__

    def spy(self, x, *args, **kwargs):
        if mapped_file(x) is not None:
            copied.append(tuple(x.shape))
        original(self, x, *args, **kwargs)

    monkeypatch.setattr(DeviceData, "__init__", spy)
    teacher = get_teacher(cfg, data)
    outputs = compute_shared_outputs(teacher, data, cfg, lambda _: None)
    result = kdsearch.fit(cfg, data=data, teacher=teacher, teacher_outputs=outputs, measure_speed=False)
    assert copied == [] and 0 <= result.metrics["test/acc"] <= 1
