"""The teacher's outputs for every view a student will see, computed once and shared.

A student sees image i in epoch e through a crop and flip that depend only on (seed, e, i)
(``data.pipeline.view_params``), so the teacher's logits for all of them, and the
attention maps Attention Transfer reads, can be computed before training and looked up
by (epoch, index) instead of running the teacher in every step of every trial; so can the
other things methods read of the teacher (``Method.reads``): its pooled embedding before the
classifier, and its feature maps.

Sizes (fp16): logits take epochs x N x classes x 2 bytes: CIFAR-10 at 30 epochs, 45,000
images: 27 MB; digits at 15 epochs: 0.4 MB. Attention maps take epochs x N x (the sum of
H x W over the teacher's stages) x 2 bytes: ResNet-50 on 32x32 CIFAR (1,360 values an
image) at 30 epochs: 3.7 GB. An embedding takes epochs x N x its width x 2 bytes (ResNet-50's
2,048 at 30 epochs on CIFAR: 5.5 GB, resnet8's 64 on digits at 15 epochs: 3 MB); full feature
maps take the sum of C x H x W over the stages (ResNet-50 on CIFAR: 0.36 M values an image,
far past memory and most disks at 30 epochs; digits' resnet20 teacher: 1,344 values). Outputs over their in-memory budget (``budget_bytes``: the free
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
from kdsearch.methods import Method, Outputs, method_class
from kdsearch.methods.attention_maps import normalised_attention
from kdsearch.methods.base import Reads
from kdsearch.models.taps import feature_forward
from kdsearch.runtime import interrupts
from kdsearch.runtime.device import resolve_device
from kdsearch.teacher.weights import Teacher, get_teacher
from kdsearch.training.method_inputs import teacher_feature_names
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
    embedding: torch.Tensor | None = None  # (epochs, N, width), fp16: the input of the classifier head
    features: list[torch.Tensor] | None = None  # per teacher stage (epochs, N, C, H, W), fp16

    @property
    def epochs(self) -> int:
        return int(self.logits.shape[0])

    def __getstate__(self) -> dict:
        # Outputs written to disk (``write_to``) travel as their files: every trial of a node maps
        # the same files (one copy, in the page cache) instead of receiving a copy of its own.
        state = dict(self.__dict__)
        for name in ARRAYS:
            state[name] = _each(_by_file, state.get(name))
        return state

    def __setstate__(self, state: dict) -> None:
        for name in ARRAYS:
            state[name] = _each(_from_file, state.get(name))
        self.__dict__.update(state)

    @property
    def mapped(self) -> bool:
        """Whether these outputs are memory maps of files on disk (``write_to``)."""
        return mapped_file(self.logits) is not None

    def nbytes(self) -> int:
        return sum(a.numel() * 2 for name in ARRAYS for a in _listed(getattr(self, name)))

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
        reads = method.reads
        for read in ("embedding", "features"):
            if read in reads.teacher and getattr(self, read) is None:
                return f"the cache holds no teacher {read} and {cfg.method} reads them"
        if "features" in reads.teacher and self.feature_names != names:
            return f"the cached features are of the teacher's {self.feature_names or 'stages'}, this run reads {names or 'its stages'}"
        if "attention" in reads.teacher:
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
        node's one copy, shared, not pinned: a pinned copy is one more per trial) or on disk.
        Feature maps stay there too, an epoch's being as large as the data or larger: each
        batch's are gathered there and moved alone (``EpochOutputs.lookup``)."""
        on_device = ("logits", "attention", "embedding")
        moved = {name: _each(lambda a: a[epoch].to(device, non_blocking=True), getattr(self, name)) for name in on_device}
        return EpochOutputs(**moved, features=_each(lambda a: a[epoch], self.features))


ARRAYS = ("logits", "attention", "embedding", "features")  # what TeacherOutputs keeps, per epoch and image


def _each(fn, value):
    """``fn`` of a tensor, or of each tensor of a list (None stays None)."""
    if value is None:
        return None
    return [fn(v) for v in value] if isinstance(value, list) else fn(value)


def _listed(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


@dataclass
class EpochOutputs:
    """One epoch's teacher outputs on the training device (its feature maps where they are kept)."""

    logits: torch.Tensor  # (N, outputs), fp16
    attention: list[torch.Tensor] | None
    embedding: torch.Tensor | None = None
    features: list[torch.Tensor] | None = None

    def lookup(self, idx: torch.Tensor) -> Outputs:
        """The teacher's outputs for these images of the training split, as a live teacher gives them."""
        pick = lambda a: a.index_select(0, idx).float()  # noqa: E731
        host = idx.cpu() if self.features is not None else None
        gather = lambda a: a.index_select(0, host).to(idx.device, non_blocking=True).float()  # noqa: E731
        return Outputs(
            pick(self.logits), _each(gather, self.features) or [], _each(pick, self.attention), _each(pick, self.embedding)
        )


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


def estimate_bytes(
    teacher: nn.Module,
    data: DatasetSplits,
    epochs: int,
    attention: bool = False,
    names: list[str] | None = None,
    *,
    embedding: bool = False,
    features: bool = False,
) -> int:
    """The bytes the outputs take for ``epochs`` epochs of the training split (fp16)."""
    forward = feature_forward(teacher.eval().cpu(), names, "teacher", embedding=embedding)
    with torch.no_grad():
        logits, maps, pooled = forward(torch.zeros(1, data.in_channels, *data.image_size))
    forward.close()
    per_image = logits.shape[1]
    per_image += sum(f.shape[-2] * f.shape[-1] for f in maps) if attention else 0
    per_image += pooled.shape[1] if embedding else 0
    per_image += sum(f[0].numel() for f in maps) if features else 0
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
    embedding: bool = False,
    features: bool = False,
) -> TeacherOutputs:
    """Run the teacher over every (epoch, image) view once; fp16 results on the CPU, or, with
    ``folder``, written there epoch by epoch (memory is then one epoch's) and memory-mapped.
    Besides the logits: the attention maps (``attention``), the embedding before the classifier
    (``embedding``), the feature maps of the stages (``features``)."""
    staging = _staging(folder) if folder is not None else None
    batch_size = batch_size or inference_batch_size(device.type)
    teacher = teacher.to(device).eval()
    forward = feature_forward(teacher, names, "teacher", embedding=embedding)
    train = split_of(data.train_x, data.train_y, data.mean, data.std, device, pad=crop_pad)
    kept: dict[str, torch.Tensor | list[torch.Tensor] | None] = {}  # every epoch's, on the host or disk
    kinds = {"attention": attention, "embedding": embedding, "features": features}
    for epoch in range(epochs):
        views = [t.to(device) for t in view_params(len(train), seed, epoch, crop_pad, flip)]
        this_epoch = _one_epoch(forward, train, views, kinds, batch_size=batch_size, amp=amp)
        if not kept:
            kept = {name: _named_files(staging, name, value, epochs) for name, value in this_epoch.items()}
        for name, value in this_epoch.items():
            for store, v in zip(_listed(kept[name]), _listed(value)):
                store[epoch] = v.cpu()
    forward.close()
    outputs = TeacherOutputs(
        logits=kept["logits"],
        attention=kept.get("attention"),
        embedding=kept.get("embedding"),
        features=kept.get("features"),
        seed=seed,
        crop_pad=crop_pad,
        flip=flip,
        data_fingerprint=data.fingerprint(),
        teacher_fingerprint=weights_fingerprint(teacher),
        feature_names=names if attention or features else None,
        amp=amp,
    )
    return outputs if staging is None else _publish(outputs, staging, Path(folder))


def _one_epoch(forward, train, views: list[torch.Tensor], kinds: dict[str, bool], *, batch_size: int, amp: bool) -> dict:
    """One epoch's outputs of every kind asked for, gathered on the device (fp16)."""
    n, device = len(train), views[0].device
    every = torch.arange(n, device=device)
    dy, dx, flips = views
    out: dict = {}
    for start in range(0, n, batch_size):
        interrupts.check()
        sl = slice(start, start + batch_size)
        x = train.normalise(train.augmented(every[sl], dy[sl], dx[sl], flips[sl]))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, maps, pooled = forward(x)
        got = {
            "logits": logits,
            # Normalised now (values in [0, 1], safe in fp16); AT's pooling is linear and it
            # normalises again, so this is exactly the live computation.
            "attention": [normalised_attention(f, CACHED_ATTENTION_P) for f in maps] if kinds["attention"] else None,
            "embedding": pooled if kinds["embedding"] else None,
            "features": maps if kinds["features"] else None,
        }
        for name, value in got.items():
            if value is not None:
                if name not in out:
                    out[name] = _each(lambda v: torch.empty(n, *v.shape[1:], dtype=torch.float16, device=device), value)
                for store, v in zip(_listed(out[name]), _listed(value)):
                    store[sl] = v.half()
    return out


def _named_files(staging: Path | None, name: str, value, epochs: int):
    """Room for every epoch of one kind of output: in memory, or a file per tensor in ``staging``."""
    if isinstance(value, list):
        return [_empty(staging, f"{name}{i}", (epochs, *v.shape)) for i, v in enumerate(value)]
    return _empty(staging, name, (epochs, *value.shape))


def _staging(folder: Path) -> Path:
    staging = Path(folder).with_name(f".{Path(folder).name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _publish(outputs: TeacherOutputs, staging: Path, folder: Path) -> TeacherOutputs:
    """The outputs written in ``staging`` become ``folder``, whole or not at all (a run stopped
    midway leaves no half-written outputs); returned as maps of their final files."""
    meta = {f.name: getattr(outputs, f.name) for f in dataclasses.fields(outputs) if f.name not in ARRAYS}
    # how each kind of output was kept: None (not kept), "one" file, or the number of files (one per stage)
    meta["files"] = {name: _count(getattr(outputs, name)) for name in ARRAYS}
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
    files = meta.pop("files", None)
    if files is None:  # written before the embedding and features were kept: logits and attention maps
        files = {"logits": "one", "attention": meta.pop("maps", None)}
    arrays = {name: _read_files(Path(folder), name, files.get(name)) for name in ARRAYS}
    return TeacherOutputs(**arrays, **meta)


def _count(value) -> str | int | None:
    return None if value is None else len(value) if isinstance(value, list) else "one"


def _read_files(folder: Path, name: str, count: str | int | None):
    if count is None:
        return None
    if count == "one":
        return _from_file({"mapped": str(folder / f"{name}.npy")})
    return [_from_file({"mapped": str(folder / f"{name}{i}.npy")}) for i in range(count)]


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
    reads: Reads | None = None,
) -> TeacherOutputs | None:
    """The teacher's outputs for every view of every epoch, once, where ``limits`` allow them
    (``CacheLimits``): its logits, and what else of it ``reads`` says the trials' methods read
    (default: ``cfg.method``'s). None: the trials run the teacher live. Each way is said in one line."""
    copies, reserved = limits.copies, limits.reserved
    reads = method_class(cfg.method).reads_for(cfg.method_args) if reads is None else reads
    kinds = {name: name in reads.teacher for name in ("attention", "embedding", "features")}
    names = teacher_feature_names(cfg, teacher) if kinds["attention"] or kinds["features"] else None
    size = estimate_bytes(teacher.model, data, cfg.epochs, names=names, **kinds)
    budget = budget_bytes(copies, reserved)
    device = resolve_device(cfg.device)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"  # the trials' precision, checked by mismatch()
    views = dict(seed=cfg.seed, epochs=cfg.epochs, crop_pad=cfg.crop_pad, flip=cfg.flip, amp=amp, names=names, **kinds)
    what = ", ".join(["logits", *(k for k, v in kinds.items() if v)])
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
                f"teacher outputs ({what}) for {cfg.epochs} epochs x {len(data.train_x)} images ({gb(size)}, {memory}): read from {folder}"
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
        f"teacher outputs ({what}) for {cfg.epochs} epochs x {len(data.train_x)} images computed once for all trials "
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
    what = ", ".join(["logits", *(k for k in ("attention", "embedding", "features") if views.get(k))])
    log(f"teacher outputs ({what}) would take {gb(size)}, {memory} {where}: trials run the teacher live")
    return None


def teacher_and_outputs(
    cfg: TrainConfig,
    data: DatasetSplits,
    cache_outputs: bool,
    log: Callable[[str], None] = lambda _: None,
    limits: CacheLimits = CacheLimits(),
    reads: Reads | None = None,
):
    """The sweep's teacher and its outputs for every view (``compute_shared_outputs``; the model
    moved to the CPU). ``limits.disk``: False where this runs on another node than the trials' driver."""
    teacher = get_teacher(cfg, data, log=log)
    outputs = compute_shared_outputs(teacher, data, cfg, log, limits, reads) if cache_outputs else None
    teacher.model.cpu()
    return teacher, outputs
