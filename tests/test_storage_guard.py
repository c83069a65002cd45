"""The full-disk guard recognises a write that found no room, wherever in the chain it failed."""

import errno
import sqlite3

from kdsearch.data import load_dataset
from kdsearch.search.space import parse_sweep
from kdsearch.sweeper.storage_guard import StorageGuard


def _guard(tmp_path):
    spec = parse_sweep({"fixed": {"method": "ce", "dataset": "digits", "epochs": 2}, "search": {"num_samples": 2}}, "s.yaml")
    return StorageGuard(str(tmp_path), str(tmp_path / "sweep"), spec, load_dataset("digits"))


def test_a_failed_write_for_lack_of_room_is_the_storage_filling_up(tmp_path):
    guard = _guard(tmp_path)
    assert not guard.caused(RuntimeError("something else"))
    try:  # what Optuna raises when its SQLite commit finds the disk full (seen in CI)
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("An exception is raised during the commit") from inner
    except RuntimeError as outer:
        assert guard.caused(outer)
    assert guard.caused(OSError(errno.ENOSPC, "No space left on device"))
    guard.tripped = True  # the watch released the reserve: the room it left is not "not full"
    assert guard.caused(RuntimeError("a state file could not be written"))


def test_a_trial_is_counted_with_every_checkpoint_it_keeps():
    from kdsearch.sweeper.storage_guard import trial_bytes

    data = load_dataset("digits")

    def need(search):
        return trial_bytes(
            parse_sweep({"fixed": {"method": "ce", "dataset": "digits", "epochs": 6}, "search": search}, "s.yaml"), data
        )

    logs = 256 << 10
    end_only = need({"scheduler": "fifo"}) - logs  # one checkpoint: at the end
    assert need({"scheduler": "asha", "grace_period": 3}) - logs == 2 * end_only  # the rung's and the end's
    assert need({"scheduler": "fifo", "checkpoint_every": 1}) - logs == 6 * end_only  # one an epoch, all kept
