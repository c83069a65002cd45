"""Small datasets written in their real on-disk formats, shared by the tests."""

import gzip
import os
import pickle
import signal
import socket
import struct
import tempfile
import time

import numpy as np
import pytest

# A suite started in the background by a script (`make test &`, nohup) inherits SIGINT ignored,
# and so would every sweep it starts: the tests that press Ctrl-C need it as a terminal has it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

os.environ.setdefault("KDSEARCH_DATA", "/nonexistent-kdsearch-data")
os.environ.setdefault("KDSEARCH_CACHE", tempfile.mkdtemp(prefix="kdsearch-test-cache-"))  # never the user's cache


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition()`` until it returns something truthy (returned); fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def file_behind(x) -> str | None:
    """The file whose memory map holds ``x``'s bytes (a tensor or array), asked of the kernel
    (/proc/self/maps), not of kdsearch: None for memory of the process's own."""
    import torch

    address = x.untyped_storage().data_ptr() if isinstance(x, torch.Tensor) else x.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(a, 16) for a in fields[0].split("-"))
            if low <= address < high:
                path = fields[5].strip() if len(fields) == 6 else ""
                return path if path.startswith("/") else None
    return None


def anonymous_memory() -> int:
    """This process's resident anonymous memory in bytes (RssAnon: not the pages of mapped files)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def write_cifar10(root, n_per_batch=20, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for i in range(1, 6):
        batch = {
            b"batch_label": b"training batch",
            b"labels": rng.integers(0, 10, n_per_batch).tolist(),
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * n_per_batch,
        }
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"labels": list(range(10)) * 2, b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8)}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names], b"num_vis": 3072}))
    return folder


def write_cifar100(root, n=60, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, count in (("train", n), ("test", 20)):
        entry = {
            b"fine_labels": rng.integers(0, 100, count).tolist(),
            b"coarse_labels": rng.integers(0, 20, count).tolist(),
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        }
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)], b"coarse_label_names": []}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return folder


def write_idx(path, array, gz=True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_fashion_mnist(root, n_train=50, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), gz)
    write_idx(root / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train), gz)
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), gz)
    write_idx(root / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test), gz)
    return root


CELEBA_ATTRS = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]


def write_celeba(root, n=24, seed=0):
    """The official layout: 178x218 aligned JPEGs, attribute and partition lists."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    files = [f"{i + 1:06d}.jpg" for i in range(n)]
    attrs = rng.choice([-1, 1], size=(n, 40))
    # The first attribute is "bright image", so a model can learn it from pixels.
    for i, name in enumerate(files):
        level = 220 if attrs[i, 0] == 1 else 30
        pixels = np.clip(rng.normal(level, 10, (218, 178, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "img_align_celeba" / name, quality=90)
    lines = [str(n), " ".join(CELEBA_ATTRS)] + [f"{f} " + " ".join(f"{v:2d}" for v in row) for f, row in zip(files, attrs)]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    parts = [0] * (n - 8) + [1] * 4 + [2] * 4
    (folder / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(files, parts)))
    return folder, attrs


_SESSION_RAY: dict = {}


def ensure_local_ray() -> str:
    """One local Ray for the sweeps the tests run in this process, started as kdsearch starts it
    and kept up between tests, as a program (a notebook, a pipeline) that holds its own Ray runs
    its sweeps: kdsearch uses it and leaves it up. Starting Ray takes ~4 s here; the suite's ~20
    sweeps in this process share one. A test that needs another Ray (a cluster, other CPUs)
    connects to that; the next test that asks for this one gets it back. Returns its GCS address."""
    import ray

    from kdsearch.ray_trials import start_ray

    if ray.is_initialized() and ray.get_runtime_context().gcs_address != _SESSION_RAY.get("gcs"):
        ray.shutdown()  # connected to some other test's cluster
    if not ray.is_initialized():
        start_ray()
        _SESSION_RAY["gcs"] = ray.get_runtime_context().gcs_address
    return _SESSION_RAY["gcs"]


@pytest.fixture
def local_ray():
    """The local Ray of ``ensure_local_ray``, for a test that sweeps in this process."""
    return ensure_local_ray()


@pytest.fixture
def no_ray():
    """No Ray in this process: for a test that starts its own, or checks that a sweep starts one."""
    import ray

    ray.shutdown()
    yield


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def write_image_folder(root, per_class=12, classes=("zero", "one", "two"), splits=("train",), colour=False):
    """Digits images saved as PNG files in root/<split>/<class>/, as a user's folder holds them;
    returns {relative path: label}."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    written = {}
    for split in splits:
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            images = digits.images[digits.target == label][: per_class if split == "train" else 3]
            for i, image in enumerate(images):
                img = Image.fromarray((image * 16).clip(0, 255).astype(np.uint8), mode="L")
                if colour:
                    img = Image.merge("RGB", (img, img.point(lambda v: 255 - v), img))
                img.save(folder / f"{i}.png")
                written[f"{split}/{name}/{i}.png"] = label
    return written
