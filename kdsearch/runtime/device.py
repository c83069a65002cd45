"""Where a run executes: its device, its CPU threads, and the stem its image size calls for."""

from __future__ import annotations

import os

import torch

from kdsearch.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but no CUDA GPU is visible: use --device cpu")
    return device


def set_threads(threads: int | None) -> int:
    """Use the CPUs this process was given: Ray sets OMP_NUM_THREADS per trial, and two
    processes with 2 threads each on 2 cores run 3-5x slower than with one thread each."""
    n = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, n))
    return n


def resolve_stem(stem: str, image_size: tuple[int, int]) -> str:
    if stem != "auto":
        return stem
    return "cifar" if min(image_size) <= 64 else "imagenet"


def gpu_memory_mb(device: torch.device, reset_peak: bool = False) -> dict:
    """This process's CUDA memory in MB: what tensors hold now and the most they held since the
    last reset (trials log both, so a leak across reused actors shows); empty off CUDA."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return {}
    values = {
        "gpu/allocated_mb": torch.cuda.memory_allocated(device) / 2**20,
        "gpu/peak_mb": torch.cuda.max_memory_allocated(device) / 2**20,
    }
    if reset_peak:
        torch.cuda.reset_peak_memory_stats(device)
    return values
