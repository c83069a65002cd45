"""Batches straight from an in-memory uint8 copy of the data on the training device.

Augmentation (random crop with zero padding, horizontal flip) is applied to whole batches
of tensors, not per sample through PIL in worker processes. Each image's view is a
deterministic function of (seed, epoch, image index): the same run sees the same pixels,
and a cached teacher can be computed for exactly those views.

The split is zero-padded once and kept channels-last (N, H, W, C): one gather per batch
does the crop and the flip together (a flipped image reads its columns in reverse), with
no host-device synchronisation in the loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from kdsearch.data.placement import is_mapped


def view_params(n: int, seed: int, epoch: int, pad: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image crop offsets (dy, dx in [0, 2*pad]) and flip flags for one epoch."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flips = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return dy, dx, flips


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each batch of an epoch: every image once. A last batch under half a
    batch joins the one before it, so batch norm never sees a batch of one."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < max(2, batch_size // 2):
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def crop_flip(padded: torch.Tensor, idx, dy, dx, flips, *, height: int, width: int) -> torch.Tensor:
    """Crops (N, C, H, W) of zero-padded NHWC images ``padded[idx]`` at (dy, dx), mirrored where
    ``flips``: one gather reads whole pixels, a flipped image its columns in reverse."""
    ar_h = torch.arange(height, device=padded.device)
    ar_w = torch.arange(width, device=padded.device)
    cols = torch.where(flips[:, None], width - 1 - ar_w, ar_w)
    rows = (dy[:, None] + ar_h)[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + cols)[:, None, :]  # (N, 1, W)
    return padded[idx[:, None, None], rows, cols].permute(0, 3, 1, 2)


class DeviceData:
    """One split held as uint8 on the device, yielding normalised float batches."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, mean, std, device: torch.device, channels_last: bool = False, *, pad: int = 0
    ):
        self.pad = int(pad)
        self.height, self.width = int(x.shape[2]), int(x.shape[3])
        # Padded once here rather than every step; NHWC so one gather reads whole pixels.
        nhwc = x.permute(0, 2, 3, 1)
        if self.pad:
            nhwc = F.pad(nhwc, (0, 0, self.pad, self.pad, self.pad, self.pad))
        self.padded = nhwc.contiguous().to(device)
        self.y = y.to(device)
        self.device = device
        self.channels_last = channels_last
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0

    @property
    def x(self) -> torch.Tensor:
        """The unpadded images (N, C, H, W), a view of the padded copy."""
        p = self.pad
        return self.padded[:, p : p + self.height, p : p + self.width, :].permute(0, 3, 1, 2)

    def __len__(self) -> int:
        return len(self.padded)

    def num_batches(self, batch_size: int) -> int:
        return len(batch_bounds(len(self), batch_size))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        out = (x.float() - self.mean) / self.std
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out.contiguous()

    def augmented(self, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """uint8 views (N, C, H, W) of images ``idx``: a crop at (dy, dx) of the zero-padded image
        (offsets in [0, 2*pad]), mirrored where ``flips``. All arguments on this device."""
        return crop_flip(self.padded, idx, dy, dx, flips, height=self.height, width=self.width)

    def train_batches(
        self, batch_size: int, seed: int, epoch: int, flip: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Shuffled, augmented batches for one epoch (crops within the split's ``pad``): (images, targets, image indices)."""
        n, pad = len(self), self.pad
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7919)
        order = torch.randperm(n, generator=g).to(self.device)
        dy, dx, flips = (t.to(self.device) for t in view_params(n, seed, epoch, pad, flip))
        for start, end in batch_bounds(n, batch_size):
            idx = order[start:end]
            yield self.normalise(self.augmented(idx, dy[idx], dx[idx], flips[idx])), self.y[idx], idx

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x = self.x
        for start in range(0, len(self), batch_size):
            yield self.normalise(x[start : start + batch_size]), self.y[start : start + batch_size]


class HostData(DeviceData):
    """One split read where it already is: the node's one shared copy in host memory (Ray's
    object store hands every trial of a node the same read-only pages) or a memory-mapped uint8
    file on disk (``stream``). Nothing is copied whole: each batch's images are gathered on the
    host (in file order, so a memory map reads forward), moved to the device, and padded,
    cropped and flipped there. The same seed gives the same batches, pixel for pixel, as
    ``DeviceData``: the same order, the same views."""

    def __init__(self, x, y, mean, std, device: torch.device, channels_last: bool = False, *, pad: int = 0):
        self.pad = int(pad)
        self.source = x  # (N, C, H, W) uint8: a tensor, a numpy array or a numpy memory map
        self.height, self.width = int(x.shape[2]), int(x.shape[3])
        self.y = (y if isinstance(y, torch.Tensor) else torch.from_numpy(np.asarray(y))).to(device)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0

    def __len__(self) -> int:
        return int(self.source.shape[0])

    @property
    def x(self) -> torch.Tensor:
        return self.rows(torch.arange(len(self)))

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Images ``idx`` (a CPU tensor) as uint8 (N, C, H, W) on the device, read in file order."""
        order = torch.argsort(idx)
        sorted_idx = idx[order].numpy()
        if isinstance(self.source, torch.Tensor):
            got = self.source[torch.from_numpy(sorted_idx)]
        else:
            got = torch.from_numpy(np.ascontiguousarray(self.source[sorted_idx]))
        out = torch.empty_like(got)
        out[order] = got
        if self.device.type == "cuda":
            out = out.pin_memory()
        return out.to(self.device, non_blocking=True)

    def augmented(self, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        batch = self.rows(idx.cpu()).permute(0, 2, 3, 1)
        if self.pad:
            batch = F.pad(batch, (0, 0, self.pad, self.pad, self.pad, self.pad))
        local = torch.arange(len(batch), device=self.device)
        return crop_flip(
            batch, local, dy.to(self.device), dx.to(self.device), flips.to(self.device), height=self.height, width=self.width
        )

    def train_batches(
        self, batch_size: int, seed: int, epoch: int, flip: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        n, pad = len(self), self.pad
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7919)
        order = torch.randperm(n, generator=g)
        dy, dx, flips = view_params(n, seed, epoch, pad, flip)
        for start, end in batch_bounds(n, batch_size):
            idx = order[start:end]
            images = self.augmented(idx, dy[idx], dx[idx], flips[idx])
            on_device = idx.to(self.device)
            yield self.normalise(images), self.y[on_device], on_device

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(self)))
            yield self.normalise(self.rows(idx)), self.y[start : start + batch_size]


def split_of(x, y, mean, std, device, pad: int = 0) -> DeviceData:
    """A whole split for evaluation or the teacher's outputs: a memory-mapped one (an image folder
    over its memory limit, streamed shards) read a batch at a time, any other copied to the device."""

    return (HostData if is_mapped(x) else DeviceData)(x, y, mean, std, device, pad=pad)


def split_for(placement: str):
    """The class that holds a split where ``placement`` says (data.placement)."""
    return DeviceData if placement == "device" else HostData
