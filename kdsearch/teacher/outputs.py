"""The teacher's outputs for every view a student will see, computed once and shared.

A student sees image i in epoch e through a crop and flip that depend only on (seed, e, i)
(``data.pipeline.view_params``), so the teacher's logits for all of them, and the
attention maps Attention Transfer reads, can be computed before training and looked up
by (epoch, index) instead of running the teacher in every step of every trial.

Sizes (fp16): logits take epochs x N x classes x 2 bytes: CIFAR-10 at 30 epochs, 45,000
images: 27 MB; digits at 15 epochs: 0.4 MB. Attention maps take epochs x N x (the sum of
H x W over the teacher's stages) x 2 bytes: ResNet-50 on 32x32 CIFAR (1,360 values an
image) at 30 epochs: 3.7 GB. Outputs over their in-memory budget (``budget_bytes``: the free
host memory's usable share split among the copies held at once, or ``KDSEARCH_TEACHER_CACHE_GB``)
are written once to the cache folder and memory-mapped: every trial of a node reads the same
files, and the limit is the disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdsearch.config import TrainConfig
from kdsearch.data import DatasetSplits
from kdsearch.data.pipeline import split_of, view_params
from kdsearch.data.placement import HEADROOM, cache_folder, existing_folder, free_host_memory, gb, mapped_file, open_mapped
from kdsearch.methods import Method, method_class
from kdsearch.methods.attention_maps import normalised_attention
from kdsearch.models.taps import feature_forward
from kdsearch.runtime import interrupts
from kdsearch.runtime.device import resolve_device
from kdsearch.teacher.weights import Teacher, get_teacher
from kdsearch.training.engine import teacher_feature_names
from kdsearch.training.evaluate import inference_batch_size

CACHED_ATTENTION_P = 2.0  # the exponent of the attention maps stored (AT's default)


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights: which teacher the outputs came from."""
    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TeacherOutputs:
    logits: torch.Tensor  # (epochs, N, outputs), fp16
    attention: list[torch.Tensor] | None  # per teacher stage (epochs, N, H, W), fp16, p = 2, L2-normalised
    seed: int
    crop_pad: int
    flip: bool
    data_fingerprint: str  # the training images they were computed on (DatasetSplits.fingerprint)
    teacher_fingerprint: str  # the teacher's weights (weights_fingerprint)
    feature_names: list[str] | None = None  # the teacher modules the attention maps came from (None: its stages)
    amp: bool = False  # computed under bf16 autocast: a run in fp32 computes its own

    @property
    def epochs(self) -> int:
        return int(self.logits.shape[0])

    def __getstate__(self) -> dict:
        # Outputs written to disk (``write_to``) travel as their files: every trial of a node maps
        # the same files (one copy, in the page cache) instead of receiving a copy of its own.
        state = dict(self.__dict__)
        state["logits"] = _by_file(self.logits)
        state["attention"] = [_by_file(a) for a in self.attention] if self.attention is not None else None
        return state

    def __setstate__(self, state: dict) -> None:
        state["logits"] = _from_file(state["logits"])
        state["attention"] = [_from_file(a) for a in state["attention"]] if state["attention"] is not None else None
        self.__dict__.update(state)

    @property
    def mapped(self) -> bool:
        """Whether these outputs are memory maps of files on disk (``write_to``)."""
        return mapped_file(self.logits) is not None

    def nbytes(self) -> int:
        return self.logits.numel() * 2 + sum(a.numel() * 2 for a in self.attention or [])

    def mismatch(
        self,
        cfg: TrainConfig,
        data: DatasetSplits,
        teacher: nn.Module,
        method: Method,
        names: list[str] | None = None,
        amp: bool = False,
    ) -> str | None:
        """Why these outputs are not this run's teacher on this run's views of these images, holding
        everything the method reads (then the run computes its teacher live); None when they are."""
        if self.epochs < cfg.epochs:
            return f"the cache covers {self.epochs} of this run's {cfg.epochs} epochs"
        if (self.seed, self.crop_pad, bool(self.flip)) != (cfg.seed, cfg.crop_pad, bool(cfg.flip)):
            return (
                f"the cache has the views of seed {self.seed}, crop_pad {self.crop_pad}, flip {bool(self.flip)}; "
                f"this run: seed {cfg.seed}, crop_pad {cfg.crop_pad}, flip {bool(cfg.flip)}"
            )
        if method.needs_attention:
            if self.attention is None:
                return f"the cache holds no attention maps and {cfg.method} reads them"
            if method.attention_p != CACHED_ATTENTION_P:
                return f"the cached attention maps are for p={CACHED_ATTENTION_P:g}, this run's p is {method.attention_p:g}"
            if self.feature_names != names:
                return f"the cached attention maps are of the teacher's {self.feature_names or 'stages'}, this run reads {names or 'its stages'}"
        if self.amp != amp:
            return f"the cache was computed {'under bf16' if self.amp else 'in fp32'}, this run is {'bf16' if amp else 'fp32'}"
        if self.data_fingerprint != data.fingerprint():
            return "the cache is of other training images"
        if self.teacher_fingerprint != weights_fingerprint(teacher):
            return "the cache is of another teacher's weights"
        return None

    def epoch_on(self, epoch: int, device: torch.device) -> EpochOutputs:
        """One epoch's outputs on the device. The rest stay where they are, in host memory (the
        node's one copy, shared, not pinned: a pinned copy is one more per trial) or on disk."""
        maps = [a[epoch].to(device, non_blocking=True) for a in self.attention] if self.attention is not None else None
        return EpochOutputs(self.logits[epoch].to(device, non_blocking=True), maps)


@dataclass
class EpochOutputs:
    """One epoch's teacher outputs on the training device."""

    logits: torch.Tensor  # (N, outputs), fp16
    attention: list[torch.Tensor] | None

    def lookup(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        logits = self.logits.index_select(0, idx).float()
        maps = [a.index_select(0, idx).float() for a in self.attention] if self.attention is not None else None
        return logits, maps


def _by_file(x: torch.Tensor):
    # numpy, not torch: Ray's object store hands every trial of a node the same read-only pages
    # of a numpy array (a torch tensor is copied into each trial)
    path = mapped_file(x)
    return {"mapped": path} if path else x.numpy()


def _from_file(x):
    if isinstance(x, dict) and "mapped" in x:
        return open_mapped(x["mapped"])
    if isinstance(x, np.ndarray):
        with warnings.catch_warnings():  # read-only pages of the object store: trials only read them
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(x)
    return x


def budget_bytes(copies: int = 1, reserved: int = 0) -> int:
    """How large the outputs may be to stay in memory: ``KDSEARCH_TEACHER_CACHE_GB`` if set, else
    the free host memory's usable share (``placement.HEADROOM``) split among the ``copies`` held
    at once (a sweep's: the driver's, and the one Ray's object store shares with the node's trials),
    after the ``reserved`` bytes the data takes there under its placement (``placement.host_bytes``)."""
    if os.environ.get("KDSEARCH_TEACHER_CACHE_GB"):
        return int(float(os.environ["KDSEARCH_TEACHER_CACHE_GB"]) * 1024**3)
    return max(0, int((free_host_memory() * HEADROOM - reserved) / max(1, copies)))


def estimate_bytes(teacher: nn.Module, data: DatasetSplits, epochs: int, attention: bool, names: list[str] | None = None) -> int:
    forward = feature_forward(teacher.eval().cpu(), names, "teacher")
    with torch.no_grad():
        logits, features = forward(torch.zeros(1, data.in_channels, *data.image_size))
    forward.close()
    per_image = logits.shape[1] + (sum(f.shape[-2] * f.shape[-1] for f in features) if attention else 0)
    return epochs * len(data.train_x) * per_image * 2


@torch.no_grad()
def compute_teacher_outputs(
    teacher: nn.Module,
    data: DatasetSplits,
    *,
    seed: int,
    epochs: int,
    crop_pad: int,
    flip: bool,
    attention: bool,
    device: torch.device,
    batch_size: int | None = None,
    amp: bool = False,
    names: list[str] | None = None,
    folder: Path | None = None,
) -> TeacherOutputs:
    """Run the teacher over every (epoch, image) view once; fp16 results on the CPU, or, with
    ``folder``, written there epoch by epoch (memory is then one epoch's) and memory-mapped."""
    staging = _staging(folder) if folder is not None else None
    batch_size = batch_size or inference_batch_size(device.type)
    teacher = teacher.to(device).eval()
    forward = feature_forward(teacher, names, "teacher")
    train = split_of(data.train_x, data.train_y, data.mean, data.std, device, pad=crop_pad)
    n = len(train)
    every = torch.arange(n, device=device)
    logits_out, maps_out = None, None
    for epoch in range(epochs):
        dy, dx, flips = (t.to(device) for t in view_params(n, seed, epoch, crop_pad, flip))
        epoch_logits, epoch_maps = None, None  # one epoch gathered on the device, then one copy to the host
        for start in range(0, n, batch_size):
            interrupts.check()
            sl = slice(start, start + batch_size)
            x = train.normalise(train.augmented(every[sl], dy[sl], dx[sl], flips[sl]))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits, features = forward(x)
            if epoch_logits is None:
                epoch_logits = torch.empty(n, logits.shape[1], dtype=torch.float16, device=device)
                epoch_maps = (
                    [torch.empty(n, *f.shape[-2:], dtype=torch.float16, device=device) for f in features] if attention else None
                )
            epoch_logits[sl] = logits.half()
            if attention:
                for store, f in zip(epoch_maps, features):
                    # Normalised now (values in [0, 1], safe in fp16); AT's pooling is linear and it
                    # normalises again, so this is exactly the live computation.
                    store[sl] = normalised_attention(f, CACHED_ATTENTION_P).half()
        if logits_out is None:
            logits_out = _empty(staging, "logits", (epochs, *epoch_logits.shape))
            maps_out = (
                [_empty(staging, f"attention{i}", (epochs, *m.shape)) for i, m in enumerate(epoch_maps)] if attention else None
            )
        logits_out[epoch] = epoch_logits.cpu()
        if attention:
            for store, m in zip(maps_out, epoch_maps):
                store[epoch] = m.cpu()
    forward.close()
    fingerprints = (data.fingerprint(), weights_fingerprint(teacher))
    outputs = TeacherOutputs(logits_out, maps_out, seed, crop_pad, flip, *fingerprints, names if attention else None, amp)
    return outputs if staging is None else _publish(outputs, staging, Path(folder))


def _staging(folder: Path) -> Path:
    staging = Path(folder).with_name(f".{Path(folder).name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _publish(outputs: TeacherOutputs, staging: Path, folder: Path) -> TeacherOutputs:
    """The outputs written in ``staging`` become ``folder``, whole or not at all (a run stopped
    midway leaves no half-written outputs); returned as maps of their final files."""
    meta = {f.name: getattr(outputs, f.name) for f in dataclasses.fields(outputs) if f.name not in ("logits", "attention")}
    meta["maps"] = len(outputs.attention) if outputs.attention is not None else None
    (staging / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return read_written(folder)


def _empty(folder: Path | None, name: str, shape: tuple) -> torch.Tensor:
    if folder is None:
        return torch.empty(shape, dtype=torch.float16)
    return torch.from_numpy(np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float16, shape=shape))


def written_folder(cache_dir: str | Path, data: DatasetSplits, teacher: nn.Module, **views) -> Path:
    """Where outputs written to disk live: one folder per data, teacher weights and views."""
    key = json.dumps([data.fingerprint(), weights_fingerprint(teacher), views], sort_keys=True, default=str)
    return Path(cache_dir) / "teacher-outputs" / hashlib.blake2b(key.encode(), digest_size=10).hexdigest()


def read_written(folder: Path) -> TeacherOutputs | None:
    """Outputs written to ``folder`` by an earlier run (memory-mapped), or None."""
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    maps = meta.pop("maps")
    logits = _from_file({"mapped": str(Path(folder) / "logits.npy")})
    attention = (
        [_from_file({"mapped": str(Path(folder) / f"attention{i}.npy")}) for i in range(maps)] if maps is not None else None
    )
    return TeacherOutputs(logits=logits, attention=attention, **meta)


# -- the sweep's shared cache: what is cached, where, and when trials run the teacher live ---------


@dataclass(frozen=True)
class CacheLimits:
    """Where a sweep's teacher outputs may live: in memory when they fit the budget for
    ``copies`` held at once (the driver's, and the one its trials share) beside the ``reserved``
    bytes of the data's placement; else, with ``disk``, written to the cache folder and
    memory-mapped (every trial of a node reads the same files); else nowhere: the trials run the
    teacher live. A trial offered outputs that do not fit it runs live too (``TeacherOutputs.mismatch``)."""

    copies: int = 1
    reserved: int = 0
    disk: bool = True


def compute_shared_outputs(
    teacher: Teacher,
    data: DatasetSplits,
    cfg: TrainConfig,
    log: Callable[[str], None],
    limits: CacheLimits = CacheLimits(),
    attention: bool | None = None,
) -> TeacherOutputs | None:
    """The teacher's outputs for every view of every epoch, once, where ``limits`` allow them
    (``CacheLimits``); with its attention maps when ``attention`` (default: when ``cfg.method``
    reads them). None: the trials run the teacher live. Each way is said in one line."""
    copies, reserved = limits.copies, limits.reserved
    attention = method_class(cfg.method).needs_attention if attention is None else attention
    names = teacher_feature_names(cfg, teacher) if attention else None
    size = estimate_bytes(teacher.model, data, cfg.epochs, attention, names)
    budget = budget_bytes(copies, reserved)
    device = resolve_device(cfg.device)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"  # the trials' precision, checked by mismatch()
    views = dict(
        seed=cfg.seed, epochs=cfg.epochs, crop_pad=cfg.crop_pad, flip=cfg.flip, attention=attention, amp=amp, names=names
    )
    folder = None
    if size > budget:
        beside = f", beside the data's {gb(reserved)}" if reserved else ""
        memory = (
            f"over the {gb(budget)} they may take in memory ({copies} copies at once{beside}; KDSEARCH_TEACHER_CACHE_GB sets it)"
        )
        folder = _disk_folder(cfg, data, teacher, views, size, memory=memory, disk=limits.disk, log=log)
        if folder is None:
            return None
        written = read_written(folder)
        if written is not None:
            log(
                f"teacher outputs for {cfg.epochs} epochs x {len(data.train_x)} images ({gb(size)}, {memory}): read from {folder}"
            )
            return written
    started = time.perf_counter()
    outputs = compute_teacher_outputs(
        teacher.model, data, device=device, names=names, folder=folder, **{k: v for k, v in views.items() if k != "names"}
    )
    where = (
        f"{gb(outputs.nbytes())}, {memory}: written to {folder}, memory-mapped by every trial (one copy per node)"
        if folder is not None
        else f"{gb(outputs.nbytes())} in memory"
    )
    log(
        f"teacher outputs for {cfg.epochs} epochs x {len(data.train_x)} images computed once for all trials "
        f"({where}, {time.perf_counter() - started:.1f} s)"
    )
    return outputs


def _disk_folder(cfg, data, teacher: Teacher, views: dict, size: int, *, memory: str, disk: bool, log) -> Path | None:
    """Where outputs over their memory budget are written, or None (said: the trials run the
    teacher live) where the disk has no room or ``disk`` is False (prepared on another node, or
    a cluster without a folder every node mounts)."""
    root = cache_folder(cfg)
    room = int(shutil.disk_usage(existing_folder(root)).free * HEADROOM)
    if disk and size <= room:
        return written_folder(root, data, teacher.model, **views)
    where = f"and over the {gb(room)} free for them under {root}" if disk else "and not on a disk every node shares"
    log(f"teacher outputs would take {gb(size)}, {memory} {where}: trials run the teacher live")
    return None


def teacher_and_outputs(
    cfg: TrainConfig,
    data: DatasetSplits,
    cache_outputs: bool,
    log: Callable[[str], None] = lambda _: None,
    limits: CacheLimits = CacheLimits(),
    attention: bool | None = None,
):
    """The sweep's teacher and its outputs for every view (``compute_shared_outputs``; the model
    moved to the CPU). ``limits.disk``: False where this runs on another node than the trials' driver."""
    teacher = get_teacher(cfg, data, log=log)
    outputs = compute_shared_outputs(teacher, data, cfg, log, limits, attention) if cache_outputs else None
    teacher.model.cpu()
    return teacher, outputs
