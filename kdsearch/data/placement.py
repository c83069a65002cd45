"""Where a run's training data lives while it trains, chosen before anything trains, and said.

- ``device``: each trial holds the split, zero-padded, on its training device (the fast path;
  ``pipeline.DeviceData``). On a CPU the device is host memory: one padded copy per trial.
- ``host``: the node's one copy in host memory, shared read-only by its trials (Ray's object
  store); each batch is gathered there and copied to the device (``pipeline.HostData``).
- ``stream``: uint8 files on disk, written once beside the cache and memory-mapped; batches read
  from them (``HostData`` over a memory map): the limit is the disk, not the memory.

``auto`` takes the first that fits: the device (every trial's padded copy in its share of
device memory, or on a CPU all of them and the shared copy in the free host memory), then the
host, then the disk. Each fits with a quarter of its room left for models, batches and the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdsearch.errors import UserError
from kdsearch.runtime.object_storage import cache_root

PLACEMENTS = ("auto", "device", "host", "stream")
HEADROOM = 0.75  # the share of a memory (or disk) the data may take; the rest is for everything else


def gb(n: float) -> str:
    return f"{n / 1024**3:.2f} GB" if n >= 1024**3 else f"{n / 1024**2:.2f} MB" if n >= 1024 else f"{n:.0f} B"


def free_host_memory() -> int:
    """Memory this machine can still give (MemAvailable), or all of it where /proc is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class Sizes:
    """What the data takes and where there is room, in bytes."""

    images: int  # training images
    shape: tuple[int, int, int]  # C, H, W
    data: int  # train + validation images, as uint8: the shared copy (and the files of a stream)
    padded: int  # one trial's padded copy of the training split plus validation: the device path
    trials: int  # trials at once on this node
    device: str  # "cpu" or "cuda"
    device_share: int  # each trial's share of device memory (a CPU: of the free host memory)
    host_free: int
    disk_free: int
    disk_path: str

    def fits(self, placement: str) -> bool:
        if placement == "device":
            if self.device == "cpu":  # every trial's copy and the shared one, in host memory
                return self.trials * self.padded + self.data <= HEADROOM * self.host_free
            return self.padded <= HEADROOM * self.device_share
        if placement == "host":
            return self.data <= HEADROOM * self.host_free
        return self.data <= HEADROOM * self.disk_free

    def describe(self) -> str:
        c, h, w = self.shape
        return (
            f"{self.images:,} training images of {c}x{h}x{w}: {gb(self.data)} with validation, {gb(self.padded)} padded per "
            f"trial; {self.trials} trial{'s' * (self.trials != 1)} at once; "
            + (f"{gb(self.device_share)} of device memory per trial, " if self.device != "cpu" else "")
            + f"{gb(self.host_free)} host memory free, {gb(self.disk_free)} disk free under {self.disk_path}"
        )


def existing_folder(path: str | Path) -> Path:
    """``path`` or its nearest folder that exists (what a disk's free space is asked of)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def sizes(data, pad: int, trials: int, device: str, device_share: int | None, disk_path: str | Path) -> Sizes:
    """The sizes of ``data`` (a DatasetSplits) for ``trials`` at once on ``device``."""
    n, c, h, w = (int(v) for v in data.train_x.shape)
    val = int(np.prod(data.val_x.shape))
    padded = n * c * (h + 2 * pad) * (w + 2 * pad) + val
    host = free_host_memory()
    disk_path = Path(disk_path)
    probe = existing_folder(disk_path)
    return Sizes(
        images=n,
        shape=(c, h, w),
        data=n * c * h * w + val,
        padded=padded,
        trials=max(1, int(trials)),
        device=device,
        device_share=int(device_share) if device_share is not None else host // max(1, int(trials)),
        host_free=host,
        disk_free=shutil.disk_usage(probe).free,
        disk_path=str(disk_path),
    )


def host_bytes(placement: str, data, pad: int, trials: int, device: str) -> int:
    """The host memory the training data holds under ``placement`` while a sweep's trials run (what
    else may use the memory, the teacher's outputs, is what is left): the shared copy (host); on a
    CPU device, every trial's padded copy too; none for a GPU's copies or a stream."""
    n, c, h, w = (int(v) for v in data.train_x.shape)
    val = int(np.prod(data.val_x.shape))
    shared = n * c * h * w + val
    if placement == "host":
        return shared
    if placement == "device" and device == "cpu":
        return max(1, trials) * (n * c * (h + 2 * pad) * (w + 2 * pad) + val) + shared
    return 0


def choose(requested: str, s: Sizes, on_disk: bool = False) -> tuple[str, str]:
    """The placement and the one line that says why; a UserError when nothing fits (or the one
    asked for does not), naming the size, the limit and what would fit. ``on_disk``: the images
    are already a file on disk (an image folder over its memory limit): ``auto`` streams them."""
    if requested not in PLACEMENTS:
        raise UserError(f"data_placement {requested!r} is not one of {', '.join(PLACEMENTS)}")
    order = ("device", "host", "stream") if requested == "auto" else (requested,)
    if requested == "auto" and on_disk:
        order = ("stream",)  # decoded to disk because over their memory limit (data_memory_gb): kept there
    for placement in order:
        if s.fits(placement):
            why = "as asked" if requested != "auto" else "chosen: decoded to disk, over data_memory_gb" if on_disk else "chosen"
            return placement, f"data placement: {placement} ({why}; {s.describe()})"
    hint = _what_would_fit(s)
    if requested == "auto":
        raise UserError(f"the data fits nowhere: {s.describe()}; {hint}")
    limit = {
        "device": "the device memory" if s.device != "cpu" else "the free host memory",
        "host": "the free host memory",
        "stream": "the free disk",
    }[requested]
    raise UserError(f"data_placement {requested} does not fit in {limit}: {s.describe()}; {hint}")


def _what_would_fit(s: Sizes) -> str:
    c, h, w = s.shape
    room = HEADROOM * max(s.host_free, s.disk_free)
    side = int(h * (room / max(1, s.data)) ** 0.5)
    tips = []
    if 8 <= side < h:
        tips.append(f"a smaller image_size ({side} px or less would fit)")
    if s.trials > 1 and s.device != "cpu":
        tips.append("fewer trials per GPU (a larger --gpus-per-trial)")
    tips.append("data_placement stream with a cache_dir on a larger disk")
    return "try " + ", or ".join(tips)


# -- stream: the splits as uint8 files on disk, memory-mapped ---------------------------------


def shard_dir(cache_dir: str | Path, data) -> Path:
    return Path(cache_dir) / "shards" / f"{data.name}-{data.fingerprint()}"


def write_shards(data, folder: Path) -> dict[str, str]:
    """The training and validation images and labels as .npy files in ``folder`` (written once,
    atomically; kept for the next run of the same data). Returns {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("train_x", "train_y", "val_x", "val_y"):
        path = folder / f"{name}.npy"
        if not path.is_file():
            tmp = folder / f".{name}.{os.getpid()}.npy"
            try:
                np.save(tmp, getattr(data, name).numpy())
                os.replace(tmp, path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise UserError(
                    f"could not write the streamed data to {folder} ({exc.strerror}): free space there, or set cache_dir"
                ) from None
        out[name] = str(path)
    return out


def open_shards(paths: dict[str, str]) -> dict[str, torch.Tensor]:
    """The files as read-only tensors over memory maps: nothing is read until a batch asks."""
    return {name: open_mapped(path) for name, path in paths.items()}


# Tensors over memory-mapped files, by their storage's address: torch keeps no Python link from a
# tensor to the numpy memmap it was made from, so ``mapped_file`` asks here. The maps stay open.
_MAPPED: dict[int, tuple[str, np.ndarray]] = {}


def open_mapped(path: str | Path) -> torch.Tensor:
    """A read-only tensor over the .npy file at ``path`` (a memory map), known to ``mapped_file``."""

    array = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():  # read-only memory maps: training only reads them
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(array)
    if array.size:
        _MAPPED[tensor.untyped_storage().data_ptr()] = (str(path), array)
    return tensor


CHUNK = 4096  # images copied at a time between memory-mapped files


def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]``; for a memory-mapped ``x`` (an image folder decoded to disk), written a chunk at
    a time to a file beside it and mapped: a split of a set larger than memory stays on disk.
    The file is named by what it holds, so the next run of the same split maps it again."""
    path = mapped_file(x)
    if path is None:
        return x[idx]

    digest = hashlib.blake2b(digest_size=8)
    digest.update(repr((x.storage_offset(), tuple(x.shape), tuple(x.stride()))).encode())
    digest.update(idx.to(torch.int64).contiguous().numpy().tobytes())
    out = Path(path).with_name(f"{Path(path).stem}-{digest.hexdigest()}.npy")
    if not out.is_file():
        write_mapped(out, (len(idx), *x.shape[1:]), lambda s: x[idx[s]].numpy(), x.numpy().dtype)
    return open_mapped(out)


def write_mapped(path: Path, shape: tuple, rows, dtype=np.uint8) -> None:
    """A .npy file of ``shape`` filled a chunk at a time (``rows(slice)`` gives a chunk's rows),
    written atomically; a disk that fills up is a one-line error."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        for start in range(0, shape[0], CHUNK):
            sl = slice(start, min(start + CHUNK, shape[0]))
            out[sl] = rows(sl)
        out.flush()
        del out
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path} ({exc.strerror}): free space there, or set cache_dir") from None


def device_memory(device: torch.device) -> int | None:
    """The training device's memory in bytes (None on a CPU: its memory is the host's)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return None


def mapped_file(x) -> str | None:
    """The file a split's tensor (or array) is a memory map of (streamed), or None (in memory)."""
    if isinstance(x, torch.Tensor):
        known = _MAPPED.get(x.untyped_storage().data_ptr()) if x.numel() else None
        return known[0] if known is not None else None
    array = x
    while array is not None and not isinstance(array, np.memmap):
        array = getattr(array, "base", None)
    return None if array is None else str(array.filename)


def is_mapped(x) -> bool:
    return mapped_file(x) is not None


def place(cfg, data, device: torch.device, log, *, trials: int = 1, share: float = 1.0, decided: str | None = None):
    """The placement for ``cfg`` (``decided`` when a sweep's driver chose it for its trials) and the
    data as it lives there: a streamed run reads memory-mapped files in the cache (written once)."""
    if decided is None:
        total = device_memory(device)
        found = sizes(data, int(cfg.crop_pad or 0), trials, device.type, int(total * share) if total else None, cache_folder(cfg))
        decided, line = choose(cfg.data_placement, found, on_disk=is_mapped(data.train_x))
        log(line)
    if decided == "stream" and not is_mapped(data.train_x):
        paths = write_shards(data, shard_dir(cache_folder(cfg), data))
        data = dataclasses.replace(data, **open_shards(paths))
    return decided, data


def cache_folder(cfg) -> Path:
    """Where a run writes what it derives from its data once: shards, the teacher's outputs."""

    return Path(cfg.cache_dir) if cfg.cache_dir else cache_root()
