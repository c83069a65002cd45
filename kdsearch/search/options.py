"""How a sweep runs: one dataclass whose fields are ``kdsearch sweep``'s flags (help and default
written once, here) and ``kdsearch.sweep()``'s keyword arguments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kdsearch.errors import UserError


def _flag(default, help: str, metavar: str | None = None):
    """A sweep option that is also a ``kdsearch sweep`` flag: its help (and the default, said
    once, here) generate the flag (``kdsearch.cli``)."""
    return field(default=default, metadata={"help": help, "metavar": metavar})


@dataclass
class SweepOptions:
    """How a sweep runs: ``kdsearch sweep``'s flags and ``kdsearch.sweep()``'s keyword arguments."""

    num_samples: int | None = _flag(None, "number of trials (default: the file's search.num_samples)")
    max_concurrent: int | None = _flag(None, "trials running at once (default: as many as the resources allow)")
    cpus_per_trial: float = _flag(1.0, "CPUs per trial")
    gpus_per_trial: float | None = _flag(
        None, "GPUs per trial; fractions share a GPU (default: 1 when the Ray cluster has GPUs, else 0)"
    )
    address: str | None = _flag(None, "join a Ray cluster: auto, or ray://HOST:PORT (default: a local Ray)")
    storage: str | None = _flag(None, "folder or URI for trial results and checkpoints (default ./sweeps)")
    shared_storage: bool = _flag(False, "the --storage folder is mounted on every node of the Ray cluster")
    tracking_uri: str | None = _flag(None, "MLflow tracking URI (default sqlite:///$PWD/mlflow.db)")
    name: str | None = _flag(None, "sweep name, also the MLflow experiment (default: the file's name)")
    resume: bool = _flag(False, "continue an interrupted sweep of the same name and storage")
    warm_start: str | None = _flag(
        None, "seed the searcher with a finished sweep's trials (name or folder; same objectives)", metavar="SWEEP"
    )
    smoke: bool = _flag(False, "two short trials, to check the set-up end to end")
    register: bool = _flag(True, "register the best student in MLflow's model registry as <name>-student")
    teacher_cache: bool = _flag(True, "compute the teacher's outputs once for all trials (within the memory budget)")
    # Not flags: the command line sets these its own way (--set/--data-dir, --quiet), or only Python can.
    overrides: dict | None = None  # fixed settings from the command line (--set, --data-dir), recorded in sweep.json
    verbose: int = 1
    data: object | None = None  # DatasetSplits to search on instead of the config's dataset (the Python API)
    teacher: object | None = None  # a Teacher or an nn.Module to distil from instead of the config's (the Python API)

    def __post_init__(self):
        if self.cpus_per_trial <= 0 or (self.gpus_per_trial is not None and self.gpus_per_trial < 0):
            raise UserError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0 (fractions like 0.25 share a GPU)")

    @staticmethod
    def flags() -> list[dataclasses.Field]:
        """The options that are ``kdsearch sweep`` flags, in order."""
        return [f for f in dataclasses.fields(SweepOptions) if "help" in f.metadata]
