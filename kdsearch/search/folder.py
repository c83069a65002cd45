"""The sweep folder, and the one module that reads and writes it (no Ray, no MLflow).

    <storage>/<name>/
        sweep.json            the manifest: where results and MLflow runs are, the space, the best trial
        trial_<id>/           Ray Tune's per-trial folder: params.json, result.json (a line per epoch), checkpoints
        best/                 student.pt, config.yaml, metrics.json: the best trial's student, tested
        report/               trials.csv/md and the plots

Ray Tune's plain files are enough to report on a sweep or to sync it to MLflow without Ray.
A trial as kdsearch sees it is a ``record.TrialRecord``: no Ray types.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdsearch.errors import UserError
from kdsearch.models.checkpoint import trial_student
from kdsearch.runtime import object_storage
from kdsearch.search.record import TrialRecord, parse_history
from kdsearch.tracking.uri import default_tracking_uri

MANIFEST = "sweep.json"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a kill leaves the old file or the new one, never half of one


@dataclass(frozen=True)
class SweepFolder:
    path: Path  # the sweep folder, or the local mirror of a sweep kept at ``uri``
    uri: str | None = None  # object storage (s3://...) that holds the sweep; None for a local folder

    def publish(self, files: list[Path]) -> None:
        """Copy files written into the local mirror of a remote sweep to its URI."""
        if self.uri is not None:
            object_storage.push(self.path, self.uri, [Path(f) for f in files])

    @property
    def location(self) -> str:
        return self.uri or str(self.path)

    @property
    def best_dir(self) -> Path:
        return self.path / "best"

    @property
    def best_student(self) -> Path:
        return self.best_dir / "student.pt"

    @property
    def study_db(self) -> Path:
        """The Optuna study (SQLite): `optuna-dashboard sqlite:///<this path>` opens it."""
        return self.path / "optuna.db"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    def exists(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def read_manifest(self) -> dict:
        path = self.path / MANIFEST
        if not path.is_file():
            raise UserError(f"{self.path} has no {MANIFEST}: pass a folder written by `kdsearch sweep`")
        return json.loads(path.read_text())

    def write_manifest(self, manifest: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path / MANIFEST, json.dumps(manifest, indent=2, default=str))

    def update_manifest(self, **values) -> dict:
        manifest = {**self.read_manifest(), **values}
        self.write_manifest(manifest)
        return manifest

    def trials(self) -> list[TrialRecord]:
        return load_trials(self.path)

    def write_best(self, config: dict, metrics: dict, provenance: dict | None = None) -> None:
        """The best student's config, metrics and how to reproduce it, beside its checkpoint
        (written first by the caller)."""
        self.best_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.best_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        _write_atomic(self.best_dir / "metrics.json", json.dumps(metrics, indent=2))
        if provenance is not None:
            _write_atomic(self.best_dir / "provenance.json", json.dumps(provenance, indent=2))

    def read_best(self) -> tuple[dict, dict] | None:
        """(config, metrics) of the best student, or None before the sweep has finalised one."""
        if not (self.best_student.is_file() and (self.best_dir / "metrics.json").is_file()):
            return None
        return yaml.safe_load((self.best_dir / "config.yaml").read_text()), json.loads(
            (self.best_dir / "metrics.json").read_text()
        )

    def trial_checkpoint(self, trial_id: str) -> Path:
        """The student file of a trial's last checkpoint: its best epoch's student."""
        if self.uri is not None:
            object_storage.pull(self.uri, trial=trial_id)
        found = sorted(p.parent for p in (self.path / f"trial_{trial_id}").glob("checkpoint_*/*.pt"))
        if not found:
            trials = ", ".join(sorted(p.name.removeprefix("trial_") for p in self.path.glob("trial_*"))) or "none"
            raise UserError(f"sweep {self.location} has no checkpoint for trial {trial_id!r}: its trials are {trials}")

        return trial_student(found[-1])  # the last: it holds the trial's best student

    def best_checkpoint(self) -> Path:
        if not self.best_student.is_file():
            raise UserError(
                f"sweep {self.location} has no best checkpoint ({self.best_student} is missing): "
                "let the sweep finish, or continue it with --resume"
            )
        return self.best_student


class SweepLock:
    """One process at a time runs a sweep: an exclusive ``flock`` on ``.<name>.lock`` beside the
    sweep folder, held while the sweep runs. The kernel releases it when the process ends,
    however it ends, so a killed sweep never leaves it behind. (flock is local to a machine:
    two machines sharing storage over NFS are not kept apart by it.)"""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self, name: str) -> SweepLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise UserError(
                    f"sweep {name!r} is already running ({holder}): wait for it to finish, or stop it (Ctrl-C) and then add --resume"
                ) from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break  # still the file at the path: ours
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed it as we opened it: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file while still holding it (a waiting process then sees a removed
        file and retries), then let go: nothing is left beside the sweep."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def remote_sweep(uri: str) -> SweepFolder:
    """The sweep kept at ``uri`` (s3://bucket/path/name), its small files copied here."""
    folder = SweepFolder(object_storage.pull(uri.rstrip("/")), uri.rstrip("/"))
    if not folder.exists():
        raise UserError(f"{uri} holds no {MANIFEST}: pass the URI of a sweep written by `kdsearch sweep` (<storage>/<name>)")
    return folder


def resolve_sweep(source: str, storage: str | None = None, tracking_uri: str | None = None) -> SweepFolder:
    """A sweep from a folder, a URI, a sweep name (under --storage, default ./sweeps) or an MLflow run id."""
    if object_storage.is_uri(source):
        return remote_sweep(source)
    if SweepFolder(Path(source)).exists():
        return SweepFolder(Path(source))
    if storage is not None and object_storage.is_uri(storage) and "/" not in source:
        return remote_sweep(f"{storage.rstrip('/')}/{source}")
    candidates = [SweepFolder(Path(source)), SweepFolder(Path(storage or Path.cwd() / "sweeps") / source)]
    if candidates[1].exists():
        return candidates[1]
    if re.fullmatch(r"[0-9a-f]{32}", source):
        from kdsearch.tracking import runs as tracking  # MLflow only when asked for a run id

        sweep_dir = tracking.sweep_dir_of_run(source, tracking_uri or default_tracking_uri())
        if object_storage.is_uri(sweep_dir):
            return remote_sweep(sweep_dir)
        folder = SweepFolder(Path(sweep_dir))
        if folder.exists():
            return folder
        raise UserError(
            f"MLflow run {source} belongs to the sweep in {folder.path}, which is not on this machine: run there, or copy it"
        )
    raise UserError(
        f"no sweep at {candidates[0].path} or {candidates[1].path} (no {MANIFEST}), and {source!r} is not an MLflow run id: "
        "pass a sweep folder, a sweep name or a parent run id"
    )


def load_trials(sweep_dir: Path) -> list[TrialRecord]:
    trials = []
    for folder in sorted(Path(sweep_dir).glob("trial_*")):
        params_path, result_path = folder / "params.json", folder / "result.json"
        if not params_path.is_file():
            continue
        history = parse_history(result_path.read_text()) if result_path.is_file() else []
        error_file = folder / "error.txt"
        error = error_file.read_text() if error_file.is_file() else None
        config = json.loads(params_path.read_text())
        trials.append(TrialRecord.read(folder.name.removeprefix("trial_"), config, history, error=error, path=str(folder)))
    if not trials:
        raise UserError(f"{sweep_dir} holds no trials yet: run the sweep first")
    return trials
