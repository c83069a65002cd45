"""Keeping a sweep's local storage from filling up under it (see ``StorageGuard``)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from torch import nn

from kdsearch.errors import UserError
from kdsearch.methods import TaskLoss, build_method
from kdsearch.models.checkpoint import build_from_spec
from kdsearch.search.space import SweepSpec
from kdsearch.training.engine import student_spec


def trial_bytes(spec: SweepSpec, data) -> int:
    """About what one trial writes: a checkpoint at each of ASHA's rungs, every
    ``checkpoint_every`` epochs and at its end (all kept), each the student alone plus the
    training state (student, the method's modules such as DML's peers, and SGD's momentum for
    all of them), and its logs."""

    cfg = spec.example_config()

    def student() -> nn.Module:
        return build_from_spec(student_spec(cfg, data))

    def nbytes(module: nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in module.state_dict().values())

    method = build_method(cfg.method, cfg.method_args, objective=TaskLoss(), make_peer=student)
    one = nbytes(student())
    checkpoints = len(spec.search.checkpoint_epochs(int(cfg.epochs or 1))) + 1
    return checkpoints * (one + 2 * (one + nbytes(method))) + (256 << 10)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


class StorageGuard:
    """Keeps a sweep's local storage from filling up under it. Before the trials: refuse a sweep
    the free space cannot hold. While they run: a reserve file (room for two trials, at least
    4 MB) sits in the sweep folder; when free space drops below one trial's worth, the reserve
    is deleted and the trials are stopped, so Ray Tune's own state files, which it does not
    write atomically, are written whole into the room it leaves, and --resume works."""

    NAME = ".kdsearch-reserve"

    def __init__(self, storage: str, sweep_dir: str, spec: SweepSpec, data):
        self.storage = storage
        self.per_trial = trial_bytes(spec, data)
        self.reserve_bytes = max(2 * self.per_trial, 4 << 20)
        self.reserve = Path(sweep_dir) / self.NAME
        self.trials = spec.search.num_samples
        self.tripped = False  # the watch saw the storage full, released the reserve and stopped the trials

    def free(self) -> int:
        return shutil.disk_usage(self.storage).free

    def check_room(self) -> None:
        need = self.trials * self.per_trial + self.reserve_bytes
        if self.free() + self.held() < need:
            raise UserError(
                f"the sweep storage {self.storage} has {_mb(self.free())} free but {self.trials} trials need about {_mb(need)}: "
                "free space there, or pass another --storage"
            )

    def held(self) -> int:
        return self.reserve.stat().st_size if self.reserve.is_file() else 0

    def place(self) -> None:
        self.reserve.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.reserve, "wb") as f:
                f.truncate(0)
                for _ in range(self.reserve_bytes >> 20):
                    f.write(bytes(1 << 20))  # real blocks: truncate() alone would reserve nothing
        except OSError:
            self.release()

    def release(self) -> None:
        self.reserve.unlink(missing_ok=True)

    def full(self) -> bool:
        return self.free() < self.per_trial

    def stop_reason(self) -> str | None:
        """Asked every second while the trials run."""
        if not self.full():
            return None
        self.tripped = True
        self.release()
        return "storage full"

    def caused(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the storage filling up: full now, stopped for it, or an error of a
        write that found no room (say, the Optuna study's SQLite commit, before the watch saw it)."""
        if self.full() or self.tripped:
            return True
        seen: BaseException | None = exc
        for _ in range(20):  # the cause chain: OSError ENOSPC, or SQLite's "database or disk is full"
            if seen is None:
                break
            if (isinstance(seen, OSError) and seen.errno == errno.ENOSPC) or "disk is full" in str(seen):
                return True
            seen = seen.__cause__ or seen.__context__
        return False

    def error(self, resume_command: str) -> UserError:
        return UserError(
            f"the sweep storage {self.storage} is full ({_mb(self.free())} free after releasing kdsearch's reserve; a trial needs "
            f"about {_mb(self.per_trial)}): what was written is whole; free space there, then continue with `{resume_command}`"
        )
