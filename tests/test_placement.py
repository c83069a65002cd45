"""Where the training data lives (issue 30): the device, the node's shared host copy, or files
streamed from disk; the choice and its error, and the same batches from each."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import anonymous_memory, file_behind

from kdsearch.data import placement
from kdsearch.data.pipeline import DeviceData, HostData
from kdsearch.errors import UserError

GB = 1024**3


def _images(n=300, c=3, h=10, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_host_and_streamed_batches_equal_the_device_path_pixel_for_pixel(tmp_path):
    x, y = _images()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    np.save(tmp_path / "x.npy", x.numpy())
    mapped = torch.from_numpy(np.load(tmp_path / "x.npy", mmap_mode="r"))
    device = DeviceData(x, y, mean, std, "cpu", pad=4)
    sources = {"host": HostData(x, y, mean, std, "cpu", pad=4), "stream": HostData(mapped, y, mean, std, "cpu", pad=4)}
    for epoch in (0, 3):
        want = list(device.train_batches(64, seed=5, epoch=epoch, flip=True))
        for name, data in sources.items():
            got = list(data.train_batches(64, seed=5, epoch=epoch, flip=True))
            assert len(got) == len(want) == device.num_batches(64) == data.num_batches(64)
            for (gx, gy, gi), (wx, wy, wi) in zip(got, want):
                assert torch.equal(gi, wi) and torch.equal(gy, wy), name
                assert torch.equal(gx, wx), f"{name}: epoch {epoch} batch differs"
    for name, data in sources.items():
        for (gx, gy), (wx, wy) in zip(data.eval_batches(100), device.eval_batches(100)):
            assert torch.equal(gx, wx) and torch.equal(gy, wy), name
        assert torch.equal(data.x, device.x)
    # every image once an epoch
    seen = torch.cat([i for _, _, i in sources["stream"].train_batches(64, seed=1, epoch=2, flip=False)])
    assert sorted(seen.tolist()) == list(range(len(x)))


def _sizes(**changes):
    base = dict(
        images=162_770,
        shape=(3, 128, 128),
        data=8 * GB,
        padded=10 * GB,
        trials=4,
        device="cuda",
        device_share=10 * GB,
        host_free=20 * GB,
        disk_free=100 * GB,
        disk_path="/cache",
    )
    return placement.Sizes(**{**base, **changes})


def test_auto_takes_the_device_then_the_host_then_the_disk_and_says_why():
    where, line = placement.choose("auto", _sizes(device_share=40 * GB))
    assert where == "device" and line.startswith("data placement: device (chosen; 162,770 training images of 3x128x128")
    assert "10.00 GB padded per trial" in line and "4 trials at once" in line
    assert placement.choose("auto", _sizes())[0] == "host"  # 10 GB padded > 0.75 of a 10 GB share
    assert placement.choose("auto", _sizes(host_free=8 * GB))[0] == "stream"
    # on a CPU the device is host memory: four padded copies and the shared one must fit there
    assert placement.choose("auto", _sizes(device="cpu", host_free=80 * GB))[0] == "device"
    assert placement.choose("auto", _sizes(device="cpu", host_free=40 * GB))[0] == "host"


def test_nothing_fits_is_one_line_naming_the_size_the_limits_and_what_would():
    with pytest.raises(UserError) as err:
        placement.choose("auto", _sizes(host_free=4 * GB, disk_free=6 * GB))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("the data fits nowhere: 162,770 training images of 3x128x128: 8.00 GB")
    assert "4.00 GB host memory free, 6.00 GB disk free under /cache" in message
    assert "a smaller image_size (96 px or less would fit)" in message and "fewer trials per GPU" in message
    with pytest.raises(UserError, match=r"^data_placement device does not fit in the device memory: .*10.00 GB padded"):
        placement.choose("device", _sizes())
    with pytest.raises(UserError, match="data_placement 'disk' is not one of auto, device, host, stream"):
        placement.choose("disk", _sizes())


def test_shards_are_written_once_and_read_as_memory_maps(tmp_path):
    from kdsearch.data import load_dataset

    data = load_dataset("digits")
    folder = placement.shard_dir(tmp_path, data)
    paths = placement.write_shards(data, folder)
    stamp = {k: (tmp_path / p).stat().st_mtime_ns for k, p in paths.items()}
    assert placement.write_shards(data, folder) == paths
    assert {k: (tmp_path / p).stat().st_mtime_ns for k, p in paths.items()} == stamp  # not written again
    opened = placement.open_shards(paths)
    assert torch.equal(opened["train_x"], data.train_x) and torch.equal(opened["val_y"], data.val_y)
    for name, path in paths.items():  # the kernel's word: the tensors' bytes are the files' pages
        assert file_behind(opened[name]) == str(Path(path).resolve()), name
    assert file_behind(data.train_x) is None


def test_a_streamed_epoch_holds_a_few_batches_of_its_data_in_memory_not_the_data(tmp_path):
    """What a user of stream placement counts on: 47 MB of training images on disk, opened and
    read for a whole epoch of batches, add little anonymous memory (the file's pages are the page
    cache's, which the kernel reclaims); a split read into memory would add all 47 MB."""
    import gc

    n, c, h, w = 48_000, 1, 32, 32
    x = np.lib.format.open_memmap(tmp_path / "train_x.npy", mode="w+", dtype=np.uint8, shape=(n, c, h, w))
    x[:] = np.arange(n * c * h * w, dtype=np.uint64).reshape(x.shape) % 251
    x.flush()
    del x
    np.save(tmp_path / "train_y.npy", np.arange(n) % 5)
    gc.collect()
    before = anonymous_memory()
    opened = placement.open_shards({k: str(tmp_path / f"{k}.npy") for k in ("train_x", "train_y")})
    data = HostData(opened["train_x"], opened["train_y"], (0.5,), (0.25,), "cpu", pad=4)
    batches = sum(1 for _ in data.train_batches(256, seed=0, epoch=0, flip=True))
    grown = anonymous_memory() - before
    assert batches == data.num_batches(256)
    assert grown < 0.25 * n * c * h * w, f"{grown / 2**20:.1f} MB of anonymous memory for {n * c * h * w / 2**20:.0f} MB of data"
    assert file_behind(opened["train_x"]) == str((tmp_path / "train_x.npy").resolve())


def test_a_run_trains_the_same_from_the_device_the_host_copy_and_the_disk(tmp_path):
    from kdsearch import TrainConfig, fit
    from kdsearch.data import load_dataset

    data = load_dataset("digits")
    results, lines = {}, {}
    for where in ("device", "host", "stream"):
        cfg = TrainConfig(
            method="ce", dataset="digits", student="resnet8", epochs=2, crop_pad=1, flip=True, cache_dir=str(tmp_path / "cache")
        )
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "data_placement": where})
        said = []
        results[where] = fit(cfg, data=data, log=said.append, measure_speed=False, evaluate_test=False)
        lines[where] = [line for line in said if line.startswith("data placement:")]
    assert lines["stream"][0].startswith("data placement: stream (as asked; 1,")
    assert len(list((tmp_path / "cache" / "shards").glob("digits-*/train_x.npy"))) == 1  # the files it read

    # the same seed: the same batches, so the same model, bit for bit, wherever the data lived
    def learnt(history):
        return [{k: v for k, v in h.items() if not k.startswith("time/")} for h in history]

    for where in ("host", "stream"):
        assert learnt(results[where].history) == learnt(results["device"].history), where
    assert results["stream"].metrics["val/acc"] > 0.3


@pytest.mark.slow
def test_a_sweep_chooses_in_the_driver_and_its_trials_stream_from_the_files(tmp_path, local_ray):
    """The driver chooses for as many trials as run at once and says so before anything trains;
    trials of a streamed sweep map the files (no copy of the data through Ray's object store)
    and train as the in-memory trials of the same settings do."""
    import yaml

    from kdsearch.search.folder import load_trials
    from kdsearch.sweeper.run import SweepOptions, run_sweep

    scores = {}
    for where in ("device", "stream"):
        space = tmp_path / f"{where}.yaml"
        space.write_text(
            yaml.safe_dump(
                {
                    "name": where,
                    "fixed": {"method": "ce", "dataset": "digits", "student": "resnet8", "epochs": 2, "data_placement": where,
                              "cache_dir": str(tmp_path / "cache")},
                    "space": {"lr": {"loguniform": [0.03, 0.1]}},
                    "search": {"num_samples": 2, "sampler": "random", "scheduler": "fifo", "seed": 0},
                }
            )
        )  # fmt: skip
        said = []
        opts = SweepOptions(storage=str(tmp_path / "s"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", verbose=0, register=False)
        run_sweep(space, opts, log=said.append)
        line = next(s for s in said if s.startswith("data placement:"))
        assert (
            line.startswith(f"data placement: {where} (as asked; 1,293 training images of 1x8x8") and "2 trials at once" in line
        )
        trials = load_trials(tmp_path / "s" / where)
        scores[where] = sorted((t.params["lr"], [h["val/acc"] for h in t.history]) for t in trials)
    assert scores["stream"] == scores["device"]
    assert list((tmp_path / "cache" / "shards").glob("digits-*/val_x.npy"))


def test_a_streamed_split_travels_to_the_trials_as_its_file_not_its_images(tmp_path):
    import dataclasses

    from kdsearch.data import load_dataset
    from kdsearch.data.placement import mapped_file, open_shards, write_shards
    from kdsearch.ray_trials.trainable import payload, unpack

    data = load_dataset("digits")
    paths = write_shards(data, tmp_path / "shards")
    streamed = dataclasses.replace(data, **open_shards(paths))
    sent = payload(streamed)
    assert {k: sent[k] for k in paths} == {k: {"mapped": p} for k, p in paths.items()}
    received = unpack(sent)
    assert mapped_file(received.train_x) == paths["train_x"] and torch.equal(received.train_x, data.train_x)
    assert file_behind(received.train_x) == str(Path(paths["train_x"]).resolve())  # the kernel's word: the file's pages
    assert mapped_file(streamed.train_x[5:]) == paths["train_x"]  # a view of the map is the map
    assert mapped_file(data.train_x) is None and isinstance(payload(data)["train_x"], np.ndarray)
