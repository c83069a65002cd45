"""Faults caused for real: a diverging trial, and the MLflow server dying in the middle of a sweep."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
from conftest import free_port, wait_until
from mlflow import MlflowClient

from kdsearch.errors import UserError
from kdsearch.sweeper.run import SweepOptions, run_sweep
from kdsearch.tracking import runs as tracking

pytestmark = pytest.mark.slow  # Ray, subprocesses or a browser: `pytest -m "not slow"` skips them


def test_a_diverging_trial_is_marked_and_the_sweep_goes_on(tmp_path, local_ray):
    space = tmp_path / "nan.yaml"
    space.write_text(f"""
name: nan
fixed: {{method: ce, dataset: digits, epochs: 3, cache_dir: {tmp_path / "cache"}}}
space:
  lr: {{choice: [1.0e+12, 0.05]}}
search: {{num_samples: 4, sampler: random, scheduler: fifo, seed: 1}}
""")
    db = f"sqlite:///{tmp_path / 'm.db'}"
    summary = run_sweep(
        space, SweepOptions(storage=str(tmp_path / "s"), tracking_uri=db, verbose=0, register=False), log=lambda _: None
    )
    statuses = dict(zip(summary.table["lr"], summary.table["status"]))
    assert statuses[1e12] == "diverged" and statuses[0.05] == "ok"
    assert summary.failures and all("diverged" in why for _, why in summary.failures)
    assert summary.best_params["lr"] == 0.05 and summary.best_metrics["test/acc"] > 0.5
    client = MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("nan").experiment_id], "tags.`kdsearch.role` = 'trial'")
    diverged = [r for r in runs if r.data.params["lr"] == "1000000000000.0"]
    assert diverged and all("diverged" in r.data.tags.get("kdsearch.error", "") for r in diverged)


def test_a_trial_with_settings_that_cannot_work_fails_once_with_its_reason(tmp_path, local_ray):
    # Two AT weights for models with three matched stages: only the trial builds the models and
    # finds out. Retrying would fail the same way, so it must end at once (max_failures is 3 here).
    space = tmp_path / "bad.yaml"
    space.write_text(f"""
name: bad
fixed: {{method: at, dataset: digits, epochs: 2, teacher: resnet8, teacher_epochs: 2, cache_dir: {tmp_path / "cache"}}}
space:
  weights: {{choice: [[1.0, 1.0], [1.0, 1.0, 1.0]]}}
search: {{num_samples: 4, sampler: random, scheduler: fifo, seed: 0, max_failures: 3}}
""")
    db = f"sqlite:///{tmp_path / 'm.db'}"
    summary = run_sweep(
        space, SweepOptions(storage=str(tmp_path / "s"), tracking_uri=db, verbose=0, register=False), log=lambda _: None
    )
    table = summary.table
    bad = table[table["weights"].map(len) == 2]
    assert (
        len(bad) and set(bad["status"]) == {"invalid"} and set(bad["epochs run"]) == {1}
    )  # one report, no retry, no epoch trained
    assert set(table[table["weights"].map(len) == 3]["status"]) == {"ok"}
    assert len(summary.failures) == len(bad) and all("give 3 weights" in why for _, why in summary.failures)
    assert summary.best_params["weights"] == [1.0, 1.0, 1.0]
    client = MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("bad").experiment_id], "tags.`kdsearch.role` = 'trial'")
    assert len(runs) == 4 and sum("give 3 weights" in r.data.tags.get("kdsearch.error", "") for r in runs) == len(bad)


def _server(db, port):
    MlflowClient(db).search_experiments()  # create the store the server opens
    return tracking.start_ui_server(db, port)[0]


DOWN_EPOCHS = 8


def test_mlflow_down_mid_sweep_loses_nothing_and_sync_catches_up(tmp_path):
    db, port = f"sqlite:///{tmp_path / 'mlflow.db'}", free_port()
    uri = f"http://127.0.0.1:{port}"
    space = tmp_path / "down.yaml"
    space.write_text(f"""
name: down
fixed: {{method: ce, dataset: digits, epochs: {DOWN_EPOCHS}, train_subset: 256, cache_dir: {tmp_path / "cache"}}}
space:
  lr: {{loguniform: [3e-2, 1e-1]}}
search: {{num_samples: 3, scheduler: fifo, seed: 0}}
""")
    server = _server(db, port)
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
    sweep = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdsearch",
            "sweep",
            str(space),
            "--storage",
            str(tmp_path / "s"),
            "--tracking-uri",
            uri,
            "--max-concurrent",
            "1",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    wait_until(lambda: list((tmp_path / "s" / "down").glob("trial_*/result.json")), 120, "the first trial's first result")
    os.killpg(server.pid, signal.SIGKILL)  # the tracking server dies while the first trial trains
    server.wait()
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err[-2000:]
    assert "NOT up to date" in out and "kdsearch sync down" in err
    folder = tmp_path / "s" / "down"
    assert (folder / "best" / "student.pt").is_file() and (folder / "report" / "trials.csv").is_file()
    histories = {}
    for result in folder.glob("trial_*/result.json"):  # training went on: every trial ran every epoch
        lines = [json.loads(line) for line in result.read_text().splitlines()]
        histories[result.parent.name.removeprefix("trial_")] = len(lines)
    assert histories and set(histories.values()) == {DOWN_EPOCHS} and len(histories) == 3

    server = _server(db, port)  # back up
    try:
        synced = subprocess.run(
            [sys.executable, "-m", "kdsearch", "sync", "down", "--storage", str(tmp_path / "s")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert synced.returncode == 0, synced.stderr[-2000:]
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("down")
        runs = client.search_runs([exp.experiment_id])
        trials = [r for r in runs if r.data.tags.get("kdsearch.role") == "trial"]
        parents = [r for r in runs if r.data.tags.get("kdsearch.role") == "sweep"]
        assert len(parents) == 1 and sorted(r.data.tags["kdsearch.trial_id"] for r in trials) == sorted(histories)
        for run in trials:  # each epoch exactly once, whether it was logged live or by sync; its searched lr too
            assert (
                float(run.data.params["lr"])
                == json.loads((folder / f"trial_{run.data.tags['kdsearch.trial_id']}" / "params.json").read_text())["lr"]
            )
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
            assert sorted(steps) == list(range(1, DOWN_EPOCHS + 1))
        parent = parents[0]
        assert "best.lr" in parent.data.tags and "test/acc" in parent.data.metrics
        assert "best_student" in [a.path for a in client.list_artifacts(parent.info.run_id)]
        assert tracking.experiment_urls(uri, uri, "down")  # and the UI can list it
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _signal_state(pid: int) -> str:
    """The signal masks of a process and of each of its threads, as /proc shows them."""
    keys = ("SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
    try:
        lines = []
        for tid in sorted(os.listdir(f"/proc/{pid}/task")):
            status = dict(
                line.split(":\t", 1) for line in open(f"/proc/{pid}/task/{tid}/status").read().splitlines() if ":\t" in line
            )
            lines.append(f"{status['Name']}({tid}) " + " ".join(f"{k}={status.get(k, '?').strip()}" for k in keys))
        return "signals: " + "; ".join(lines)
    except OSError as exc:
        return f"signals: unreadable ({exc})"


class _Sweep:
    """`kdsearch sweep` in its own process group; stdout and stderr read line by line while it
    runs (by one reader each: a second reader of the same pipe would steal lines)."""

    def __init__(self, space, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kdsearch", "sweep", str(space), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=lambda: self.out.extend(iter(self.proc.stdout.readline, "")), daemon=True),
            threading.Thread(target=lambda: self.err.extend(iter(self.proc.stderr.readline, "")), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def finish(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # never leave it running (one trained a teacher for an hour)
            signals = _signal_state(self.proc.pid)  # a lost Ctrl-C: pending, blocked, ignored or caught, and by which thread
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running after {timeout} s; {signals}: {''.join(self.err)[-2000:]}") from None
        for reader in self.readers:
            reader.join(timeout=30)  # the pipes close when the process ends
        return code

    def last_line(self) -> str:
        return [line for line in self.err if line.strip()][-1].strip()


def test_ctrl_c_during_the_trials_finalises_nothing_and_resume_finishes_the_sweep(tmp_path):
    space = tmp_path / "cc.yaml"
    space.write_text(f"""
name: cc
fixed: {{method: kd, dataset: digits, epochs: 60, train_subset: 512, teacher: resnet8, teacher_epochs: 3, cache_dir: {tmp_path / "cache"}}}
space:
  alpha: {{uniform: [0.3, 0.9]}}
search: {{num_samples: 3, scheduler: fifo, seed: 0}}
""")
    db, storage = f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "s"
    args = ("--storage", str(storage), "--tracking-uri", db, "--max-concurrent", "1")
    sweep = _Sweep(space, *args)
    wait_until(
        lambda: sweep.proc.poll() is not None or list((storage / "cc").glob("trial_*/result.json")), 180, "the first epoch"
    )
    assert sweep.proc.poll() is None, "".join(sweep.err)[-2000:]

    # A second start while it runs, with or without --resume, is refused naming the process.
    for extra in ((), ("--resume",)):
        second = subprocess.run(
            [sys.executable, "-m", "kdsearch", "sweep", str(space), *args, *extra], capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 2, second.stderr
        [line] = second.stderr.strip().splitlines()
        assert line.startswith(
            f"kdsearch: error: sweep 'cc' is already running (process {sweep.proc.pid} on {socket.gethostname()}"
        )
        assert line.endswith("wait for it to finish, or stop it (Ctrl-C) and then add --resume")

    sweep.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert sweep.finish(timeout=180) == 130, "".join(sweep.err)[-2000:]
    last = sweep.last_line()
    assert last.startswith("kdsearch: sweep 'cc' interrupted with ") and "nothing was finalised" in last, sweep.err[-8:]
    assert f"`kdsearch sweep {space} --resume --storage {storage} --tracking-uri {db}`" in last
    assert "top trials" not in "".join(sweep.out) and not (storage / "cc" / "best").exists()
    assert len(list((storage / "cc").glob("trial_*"))) <= 3  # the refused starts added no trial
    client = MlflowClient(db)
    parent = client.search_runs([client.get_experiment_by_name("cc").experiment_id], "tags.`kdsearch.role` = 'sweep'")[0]
    assert parent.info.status == "KILLED" and not any(k.startswith("best.") for k in parent.data.tags)
    assert not client.search_model_versions("name='cc-student'")

    resumed = subprocess.run(
        [sys.executable, "-m", "kdsearch", "sweep", str(space), "--resume", *args], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    best = json.loads((storage / "cc" / "sweep.json").read_text())["best_params"]
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and float(parent.data.tags["best.alpha"]) == best["alpha"]
    assert len(client.search_model_versions("name='cc-student'")) == 1
    trials = client.search_runs([parent.info.experiment_id], "tags.`kdsearch.role` = 'trial'")
    assert len(trials) == 3


def test_ctrl_c_while_the_teacher_trains_stops_at_once_and_keeps_nothing(tmp_path):
    space = tmp_path / "ct.yaml"
    space.write_text(f"""
name: ct
fixed: {{method: kd, dataset: digits, epochs: 2, teacher_epochs: 5000, cache_dir: {tmp_path / "cache"}}}
space:
  alpha: {{uniform: [0.3, 0.9]}}
search: {{num_samples: 2, scheduler: fifo}}
""")
    storage = tmp_path / "s"
    sweep = _Sweep(space, "--storage", str(storage), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    wait_until(
        lambda: sweep.proc.poll() is not None or any("[teacher] epoch" in line for line in sweep.err),
        240,
        "the teacher's first epoch",
    )
    sweep.proc.send_signal(signal.SIGINT)
    assert sweep.finish(timeout=180) == 130, "".join(sweep.err)[-2000:]  # at once, not after 5,000 epochs
    assert (
        sweep.last_line()
        == "kdsearch: sweep 'ct' interrupted before its trials started; nothing was kept: run the same command again"
    )
    assert not (storage / "ct").exists()


SWALLOWED_CTRL_C = """
import os, signal, time
from torch import nn


class Finaliser:
    def __del__(self):
        # Ctrl-C while Python runs a finaliser (a __del__, a weakref callback: torch and Ray run them
        # during training): Python prints the KeyboardInterrupt as "Exception ignored" and carries on.
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.head = nn.Linear(in_channels * 8 * 8, num_classes)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 5:
            Finaliser()
        return self.head(x.flatten(1))
"""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, as intended
def test_a_ctrl_c_that_python_swallows_in_a_finaliser_still_stops_training_at_once(tmp_path):
    (tmp_path / "swallow.py").write_text(SWALLOWED_CTRL_C)
    proc = subprocess.run(
        [sys.executable, "-m", "kdsearch", "train", "--method", "ce", "--dataset", "digits", "--student", "swallow:Net"]
        + ["--epochs", "300", "--cache-dir", str(tmp_path / "cache")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Exception ignored" in proc.stderr  # Python did swallow it
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1] == "kdsearch: interrupted"
    assert not [line for line in proc.stderr.splitlines() if "epoch 2/" in line]  # stopped in the first epoch


def test_a_full_disk_stops_the_sweep_in_one_line_and_resume_finishes_it(tmp_path):
    # Storage on a real 30 MB filesystem (tmpfs; mounting needs root, as CI runs): first a sweep
    # that cannot fit is refused up front, then a disk that fills up mid-sweep.
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)], check=True)
    try:
        space = tmp_path / "full.yaml"
        space.write_text(f"""
name: full
fixed: {{method: ce, dataset: digits, epochs: 40, cache_dir: {tmp_path / "cache"}}}
space:
  lr: {{loguniform: [3.0e-2, 1.0e-1]}}
search: {{num_samples: 2, scheduler: fifo}}
""")
        storage, db = mount / "s", f"sqlite:///{tmp_path / 'm.db'}"
        args = ("--storage", str(storage), "--tracking-uri", db, "--max-concurrent", "1", "--quiet")
        # Refused up front (in this process: the same code path, without a second interpreter start).
        opts = SweepOptions(storage=str(storage), tracking_uri=db, num_samples=100, verbose=0, register=False)
        with pytest.raises(UserError) as err:
            run_sweep(space, opts, log=lambda _: None)
        assert str(err.value).startswith(f"the sweep storage {storage} has ") and "but 100 trials need about" in str(err.value)
        assert not (storage / "full").exists()

        sweep = _Sweep(space, *args)
        wait_until(
            lambda: sweep.proc.poll() is not None or [p for p in storage.glob("full/trial_*/result.json") if p.stat().st_size],
            180,
            "an epoch",
        )
        hog = mount / "hog"
        with open(hog, "wb", buffering=0) as f:  # another program fills the disk (unbuffered: nothing left to flush on close)
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
            except OSError:
                pass
        assert sweep.finish(timeout=300) == 2, "".join(sweep.err)[-3000:]
        assert "Traceback" not in "".join(sweep.err), "".join(sweep.err)[-3000:]
        last = sweep.last_line()
        assert last.startswith(f"kdsearch: error: the sweep storage {storage} is full (") and "--resume" in last

        hog.unlink()  # space freed: the same sweep goes on
        resumed = subprocess.run(
            [sys.executable, "-m", "kdsearch", "sweep", str(space), *args, "--resume"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert (storage / "full" / "best" / "student.pt").is_file() and len(list(storage.glob("full/trial_*"))) == 2
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_study_file_the_full_disk_refuses_is_one_warning_line(tmp_path, capfd):
    # SQLite's error on a full disk quotes its SQL over a dozen lines; the warning quotes its first.
    import optuna

    from kdsearch.search.study import write_study

    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        with open(mount / "hog", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        trial = optuna.trial.create_trial(params={}, distributions={}, value=0.5)
        assert not write_study("s", ["maximize"], ["val/acc"], [trial], mount / "optuna.db")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: could not write the Optuna study to {mount / 'optuna.db'} ("), err
    assert "full" in err[0] and err[0].endswith("; the sweep's results are unaffected")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, as intended
def test_the_python_api_does_not_lose_a_swallowed_ctrl_c_either(tmp_path, monkeypatch):
    import kdsearch

    (tmp_path / "swallow.py").write_text(SWALLOWED_CTRL_C)
    monkeypatch.syspath_prepend(str(tmp_path))
    epochs = []
    with pytest.raises(KeyboardInterrupt):
        kdsearch.fit(
            {"method": "ce", "dataset": "digits", "student": "swallow:Net", "epochs": 300, "cache_dir": str(tmp_path / "c")},
            log=epochs.append,
            measure_speed=False,
        )
    assert len(epochs) <= 1  # stopped in the first epoch, not after 300
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # and Python's own handler is back


def test_a_sweep_interrupted_twice_finishes_with_every_trial_once_and_the_study_whole(tmp_path):
    """A sweep that outlives a working day: Ctrl-C, --resume, Ctrl-C again, --resume to the end.
    Every trial is counted once (folders, MLflow runs, epochs, the Optuna study)."""
    import optuna

    space = tmp_path / "day.yaml"
    space.write_text(f"""
name: day
fixed: {{method: ce, dataset: digits, epochs: 8, train_subset: 256, teacher: resnet8, student: resnet8, cache_dir: {tmp_path / "cache"}}}
space:
  lr: {{loguniform: [1e-2, 2e-1]}}
search: {{num_samples: 8, scheduler: fifo, sampler: tpe, n_startup_trials: 3, seed: 0}}
""")
    db, storage = f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "s"
    args = ("--storage", str(storage), "--tracking-uri", db, "--max-concurrent", "2")

    def finished_trials():  # a trial of a fifo sweep checkpoints once, at its end
        return sum(1 for p in (storage / "day").glob("trial_*") if any(p.glob("checkpoint_*")))

    for extra in ((), ("--resume",)):
        stop_after = finished_trials() + 2  # two more than the last run left (it may finish some while it stops)
        sweep = _Sweep(space, *args, *extra)
        wait_until(lambda: sweep.proc.poll() is not None or finished_trials() >= stop_after, 300, f"{stop_after} trials")
        assert sweep.proc.poll() is None, "".join(sweep.err)[-2000:]
        sweep.proc.send_signal(signal.SIGINT)
        assert sweep.finish(timeout=180) == 130, "".join(sweep.err)[-2000:]
    done = subprocess.run(
        [sys.executable, "-m", "kdsearch", "sweep", str(space), "--resume", *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]

    folders = sorted((storage / "day").glob("trial_*"))
    assert len(folders) == 8
    client = MlflowClient(db)
    experiment = client.get_experiment_by_name("day").experiment_id
    runs = client.search_runs([experiment], "tags.`kdsearch.role` = 'trial'")
    assert sorted(r.data.tags["kdsearch.trial_id"] for r in runs) == sorted(f.name.removeprefix("trial_") for f in folders)
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == list(range(1, 9))  # each epoch once
    study = optuna.load_study(study_name="day", storage=f"sqlite:///{storage / 'day' / 'optuna.db'}")
    trained = [t for t in study.trials if not t.user_attrs.get("kdsearch.repeat")]
    assert sorted(t.user_attrs["kdsearch.trial_id"] for t in trained) == sorted(f.name.removeprefix("trial_") for f in folders)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trained)
    assert {t.user_attrs["kdsearch.mlflow_run_id"] for t in trained} == {r.info.run_id for r in runs}


def test_a_trial_whose_worker_dies_resumes_from_its_checkpoint_with_every_epoch_in_its_history(tmp_path, monkeypatch, local_ray):
    # The student's process dies for real (os._exit, as the kernel's OOM killer or a lost node
    # would end it) at the first step of its 20th epoch, once: Tune restarts the trial from its
    # last checkpoint, of epoch 16 (checkpoint_every 8), so epochs 17-19 train again. Its
    # result.json holds every epoch once, each from the run that made the trial's checkpoints
    # (1-16 from the first process, 17-40 from the restored one), and its score is that history's
    # best: not an epoch of the abandoned run, whose model is gone. (Ray copies result.json back
    # from storage when a trial restarts, a copy only as new as Tune's last save of its state.)
    code = tmp_path / "project"
    code.mkdir()
    mark = tmp_path / "crashed"
    (code / "crashy.py").write_text(
        "import os\nfrom pathlib import Path\nfrom torch import nn\n\n"
        "calls = 0\n\n\n"
        "class Crashy(nn.Sequential):\n"
        "    def forward(self, x):\n"
        "        global calls\n"
        "        calls += self.training\n"
        f"        if calls == 400 and not Path({str(mark)!r}).exists():\n"
        f"            Path({str(mark)!r}).write_text('')\n"
        "            os._exit(1)\n"
        "        return super().forward(x)\n\n\n"
        "def crashy(num_classes, in_channels):\n"
        "    return Crashy(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                  nn.Linear(8, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(code))
    space = tmp_path / "crash.yaml"
    space.write_text(f"""
name: crash
fixed: {{method: ce, dataset: digits, student: crashy:crashy, epochs: 40, cache_dir: {tmp_path / "cache"}}}
space:
  lr: {{choice: [0.05]}}
search: {{sampler: grid, scheduler: fifo, max_failures: 1, checkpoint_every: 8}}
""")
    summary = run_sweep(
        space,
        SweepOptions(storage=str(tmp_path / "s"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", verbose=0, register=False),
        log=lambda _: None,
    )
    assert mark.exists()  # it did die once
    (result,) = (tmp_path / "s" / "crash").glob("trial_*/result.json")
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 41)), [r["epoch"] for r in rows]
    first, restored = rows[:16], rows[16:]
    assert len({r["pid"] for r in first}) == len({r["pid"] for r in restored}) == 1 and first[0]["pid"] != restored[0]["pid"]
    assert [r["iterations_since_restore"] for r in restored] == list(range(1, 25))  # restored at epoch 16, not retrained
    assert rows[-1]["trial/score"] == max(r["val/acc"] for r in rows)
    assert list(summary.table["status"]) == ["ok"] and summary.best_metrics["val/acc"] == rows[-1]["trial/score"]
