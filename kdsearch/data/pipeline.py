"""Batches straight from an in-memory uint8 copy of the data on the training device.

Augmentation (random crop with zero padding, horizontal flip) is applied to whole batches
of tensors, not per sample through PIL in worker processes. Each image's view is a
deterministic function of (seed, epoch, image index): the same run sees the same pixels,
and a cached teacher can be computed for exactly those views.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F


def view_params(n: int, seed: int, epoch: int, pad: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image crop offsets (dy, dx in [0, 2*pad]) and flip flags for one epoch."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flips = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return dy, dx, flips


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Batched random crop of a zero-padded batch (N, C, H, W) and horizontal flip."""
    if pad > 0:
        n, _, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
        batch = torch.arange(n, device=x.device)[:, None, None]
        x = padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # advanced indexing puts C last
    if flips.any():
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
    return x


class DeviceData:
    """One split held as uint8 on the device, yielding normalised float batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std, device: torch.device, channels_last: bool = False):
        self.x = x.to(device)
        self.y = y.to(device)
        self.device = device
        self.channels_last = channels_last
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0

    def __len__(self) -> int:
        return len(self.x)

    def num_batches(self, batch_size: int) -> int:
        """Batches per epoch under the rule in ``train_batches``."""
        full, rest = divmod(len(self.x), batch_size)
        return max(1, full + (rest >= max(2, batch_size // 2)))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        out = (x.float() - self.mean) / self.std
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def train_batches(self, batch_size: int, seed: int, epoch: int, pad: int, flip: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Shuffled, augmented batches for one epoch: (images, targets, image indices).

        The last partial batch is dropped when it would be tiny (under half a batch), so
        batch norm never sees a batch of one.
        """
        n = len(self.x)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7919)
        order = torch.randperm(n, generator=g)
        dy, dx, flips = (t.to(self.device) for t in view_params(n, seed, epoch, pad, flip))
        order = order.to(self.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if start > 0 and len(idx) < max(2, batch_size // 2):
                break
            images = crop_flip(self.x[idx], dy[idx], dx[idx], flips[idx], pad)
            yield self.normalise(images), self.y[idx], idx

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.x), batch_size):
            yield self.normalise(self.x[start : start + batch_size]), self.y[start : start + batch_size]
