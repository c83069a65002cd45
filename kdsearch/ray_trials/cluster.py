"""Starting Ray, and what the cluster offers: resources, GPUs, storage, the user's code."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import math
import os
import socket
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from kdsearch.errors import UserError, first_line


def pack_code(paths: list[str]) -> bytes:
    """The user's modules and packages (the plan's ``user_code``) as one zip archive, for a Ray this sweep
    did not start: its workers were started without them (a job's ``py_modules`` are fixed when
    Ray starts), so each trial puts the archive first on its ``sys.path`` (``use_code``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in map(Path, paths):
            files = (
                sorted(f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts) if path.is_dir() else [path]
            )
            for file in files:
                archive.write(file, file.relative_to(path.parent).as_posix())
    return buffer.getvalue()


def use_code(archive: bytes) -> None:
    """Python imports the archive's modules in this process as from a folder (zipimport), before
    the trial imports the user's models or unpickles a teacher of theirs."""
    path = Path(tempfile.gettempdir()) / f"kdsearch-code-{hashlib.sha256(archive).hexdigest()[:16]}.zip"
    if not path.exists():
        part = path.with_suffix(f".{os.getpid()}.part")
        part.write_bytes(archive)
        part.replace(path)  # whole or not at all, for the trials of a node that start at once
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
        importlib.invalidate_caches()


def start_ray(
    address: str | None = None, num_cpus: int | None = None, quiet: bool = True, py_modules: list[str] | None = None
) -> bool:
    """Join a cluster (``auto`` or ``ray://host:port``) or start a local Ray for this process;
    ``py_modules`` (the user's own code) go to every worker through the job's runtime environment.
    Returns whether this call connected Ray, so that the caller stops only a Ray it started: a
    Ray the caller's program already holds is used as it is and left running."""
    if ray.is_initialized():
        if not address:
            return False
        ray.shutdown()  # asked for a particular cluster: do not run on whatever Ray this process holds
    if quiet:
        # A trial that fails is listed with its reason in the summary, its error.txt and MLflow;
        # Tune's own log of it is a traceback per failure on the user's terminal.
        for name in ("ray.tune", "ray.air", "ray.train"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": not quiet,
        "configure_logging": True,
        "logging_level": "ERROR",
    }
    if py_modules:
        kwargs["runtime_env"] = {"py_modules": list(py_modules)}
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # Ray 2.60's own servers listen on every interface whatever node IP is given (newer Ray
            # binds them to the node IP): on a shared network, firewall the Ray ports.
            # Ray starts its workers at nice 15, below its own servers and the driver (nice 0):
            # on a machine whose cores the trials fill, every wake-up of those preempts a trial.
            # Trials are the work here, so they run at the driver's priority (RAY_worker_niceness
            # set by the user wins; a cluster's nodes take it from where `ray start` runs).
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=_object_store_bytes(), **kwargs)
    except ConnectionError as exc:
        raise UserError(
            f"cannot reach the Ray cluster at {address!r} ({first_line(exc, 120)}): start it with `ray start --head` or drop --address"
        ) from None
    return True


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is a one-line error in seconds (ray.init would retry
    for minutes, printing warnings)."""
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"cannot reach the Ray cluster at {address!r} ({reason}): start it with `ray start --head` or drop --address"
        ) from None


def _object_store_bytes() -> int:
    # Ray's default is 30% of RAM; the data and teacher here are small next to that.
    return int(os.environ.get("KDSEARCH_OBJECT_STORE_BYTES", 2 * 1024**3))


def stop_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


def gpu_elsewhere(device: str) -> bool:
    """Whether this driver has no GPU for ``device`` while the Ray cluster has GPUs."""
    if device == "cpu" or torch.cuda.is_available():
        return False
    return ray.cluster_resources().get("GPU", 0) >= 1


def run_on_a_gpu(fn: Callable, *args):
    """``fn(*args)`` as a Ray task holding one GPU of the cluster; returns its result and the node it ran on."""

    def task(*a):
        return fn(*a), ray.get_runtime_context().get_node_id()

    try:
        result, node = ray.get(ray.remote(num_gpus=1, max_retries=0)(task).remote(*args))
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, UserError):
            raise exc.cause from None  # the one line, as if it had run here
        raise
    return (*result, node)


def gpus_per_trial_default(gpus_per_trial: float | None) -> float:
    """None: one GPU per trial when the cluster has GPUs, else none (Ray leaves a GPU-less
    trial's CUDA_VISIBLE_DEVICES alone, so trials without a GPU of their own are kept off them)."""
    if gpus_per_trial is not None:
        return gpus_per_trial
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def check_storage(storage: str, shared: bool) -> None:
    """A local --storage exists on this machine only: on a cluster of several nodes a trial on
    another node fails at its first checkpoint, unless every node mounts the folder."""
    nodes = node_count()
    if "://" not in storage and nodes > 1 and not shared:
        raise UserError(
            f"--storage {storage} is a folder on this machine but the Ray cluster has {nodes} nodes: pass "
            "--storage s3://bucket/path (or gs://...), or --shared-storage if every node mounts that folder"
        )


def node_count() -> int:
    """How many nodes the Ray cluster has alive (1: this machine alone)."""
    return len([n for n in ray.nodes() if n.get("Alive")])


def check_shared_folder(folder, shared: bool, what: str) -> None:
    """Files the trials map (streamed data, teacher outputs on disk) are written on this machine:
    on a cluster of several nodes, every node must mount the folder they are in."""
    nodes = node_count()
    if nodes > 1 and not shared and "://" not in str(folder):
        raise UserError(
            f"{what} are written under {folder}, a folder on this machine, but the Ray cluster has {nodes} nodes: set "
            "cache_dir to a folder every node mounts and pass --shared-storage, or set data_placement: host"
        )


def check_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    total = ray.cluster_resources()
    if gpus_per_trial > total.get("GPU", 0):
        raise UserError(
            f"--gpus-per-trial {gpus_per_trial} but the Ray cluster has {total.get('GPU', 0):g} GPUs: lower it, or join a cluster with GPUs (--address)"
        )
    if cpus_per_trial > total.get("CPU", 0):
        raise UserError(f"--cpus-per-trial {cpus_per_trial} but the Ray cluster has {total.get('CPU', 0):g} CPUs: lower it")


def trials_at_once(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the Ray cluster runs at the same time with these resources each."""
    total = ray.cluster_resources()
    fits = total.get("CPU", 0) / cpus_per_trial
    if gpus_per_trial > 0:
        fits = min(fits, total.get("GPU", 0) / gpus_per_trial)
    return max(1, math.floor(fits + 1e-9))


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """Set environment variables for a block and restore what was there after (a second sweep in
    one Python process must not inherit the first one's)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
