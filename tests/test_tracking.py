"""SweepTracker against a real MLflow sqlite store: each trial once, each epoch once, and a best
config that a resumed sweep can replace."""

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from kdsearch.errors import UserError
from kdsearch.models.checkpoint import save_checkpoint
from kdsearch.search.record import Objective, TrialRecord, ranked
from kdsearch.tracking import runs as tracking


@pytest.fixture
def tracker(tmp_path):
    t = tracking.SweepTracker(
        f"sqlite:///{tmp_path / 'm.db'}", experiment="exp", sweep_dir=str(tmp_path / "s"), tags={"method": "kd"}
    )
    t.start({"epochs": 3, "space.alpha": "[0, 1]"})
    return t


def _runs(t, role):
    client = MlflowClient(t.tracking_uri)
    return client.search_runs([t.experiment_id], f"tags.`kdsearch.role` = '{role}'")


def test_live_logging_then_sync_logs_each_epoch_once(tracker):
    tracker.trial_started("a", {"alpha": 0.5})
    for epoch in (1, 2):
        tracker.trial_result("a", {"alpha": 0.5}, {"epoch": epoch, "val/acc": 0.5 + epoch / 10, "training_iteration": epoch})
    history = [{"epoch": e, "val/acc": 0.5 + e / 10} for e in (1, 2, 3)]
    added = tracker.sync(
        [TrialRecord("a", {"alpha": 0.5}, history, "TERMINATED"), TrialRecord("b", {"alpha": 0.2}, history, "TERMINATED")]
    )
    assert added == 1 + 3  # trial a's third epoch, and all of trial b
    assert tracker.sync([TrialRecord("a", {"alpha": 0.5}, history, "TERMINATED")]) == 0  # nothing twice
    client = MlflowClient(tracker.tracking_uri)
    trials = _runs(tracker, "trial")
    assert sorted(r.data.tags["kdsearch.trial_id"] for r in trials) == ["a", "b"]
    for run in trials:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/acc")) == [1, 2, 3]


def test_a_resumed_sweep_finds_its_parent_run_and_can_replace_the_best(tracker, tmp_path):
    student = torch.nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "student.pt", student, {"arch": "x"})
    tracker.log_best({"alpha": 0.5}, {"method": "kd"}, {"test/acc": 0.8}, Path(path))
    tracker.finish("KILLED")
    again = tracking.SweepTracker(tracker.tracking_uri, experiment="exp", sweep_dir=tracker.sweep_dir, tags={"method": "kd"})
    assert again.start({"epochs": 3}) == tracker.parent_id  # the same parent run, running again
    again.log_best({"alpha": 0.7}, {"method": "kd"}, {"test/acc": 0.9}, Path(path))  # a param would refuse the change
    again.finish()
    parent = MlflowClient(tracker.tracking_uri).get_run(tracker.parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["best.alpha"] == "0.7" and parent.data.metrics["test/acc"] == 0.9
    assert len(_runs(tracker, "sweep")) == 1


def test_an_http_server_that_is_not_there_is_one_line_at_once():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=f"MLflow tracking at http://127.0.0.1:{port} is unreachable"):
        tracking.probe_server(f"http://127.0.0.1:{port}")
    tracking.probe_server("sqlite:///x.db")  # a local store needs no probe


def test_a_new_sweep_creates_trial_runs_without_searching_and_a_resumed_one_finds_them(tracker, monkeypatch):
    searches = []
    real = MlflowClient.search_runs

    def counting(self, *args, **kwargs):
        searches.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "search_runs", counting)
    for trial in ("a", "b", "c"):
        tracker.trial_started(trial, {"alpha": 0.5})
    tracker.drain()
    assert searches == []  # a new parent has no trial runs to find: no query per trial
    again = tracking.SweepTracker(tracker.tracking_uri, experiment="exp", sweep_dir=tracker.sweep_dir, tags={"method": "kd"})
    again.start({})
    history = [{"epoch": 1, "val/acc": 0.6}]
    again.sync([TrialRecord(t, {"alpha": 0.5}, history, "TERMINATED") for t in ("a", "b", "c")])
    assert len(searches) == 1 + 1  # the parent, then one query listing the trials' existing runs (not one per trial)
    assert sorted(r.data.tags["kdsearch.trial_id"] for r in _runs(tracker, "trial")) == ["a", "b", "c"]  # none twice
    third = tracking.SweepTracker(tracker.tracking_uri, experiment="exp", sweep_dir=tracker.sweep_dir, tags={"method": "kd"})
    third.start({})
    longer = history + [{"epoch": 2, "val/acc": 0.7}]
    assert third.sync([TrialRecord(t, {"alpha": 0.5}, longer, "TERMINATED") for t in ("a", "b", "c")]) == 3  # epoch 2 only
    client = MlflowClient(tracker.tracking_uri)
    for run in _runs(tracker, "trial"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2]


def test_live_logging_never_holds_up_the_caller_and_drains_in_order(tracker, monkeypatch):
    """Tune's loop calls trial_result: it returns while MLflow is still busy (here: blocked), and
    the epochs land in order once MLflow answers."""
    import threading

    gate = threading.Event()
    real = MlflowClient.log_batch

    def slow(self, *args, **kwargs):
        assert gate.wait(30)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", slow)
    tracker.trial_started("a", {"alpha": 0.5})
    caller = threading.Thread(
        target=lambda: [tracker.trial_result("a", {"alpha": 0.5}, {"epoch": e, "val/acc": 0.5 + e / 10}) for e in (1, 2, 3)]
    )
    caller.start()
    caller.join(10)
    assert not caller.is_alive()  # returned although MLflow has not logged anything yet
    assert not tracker.drain(timeout=0.2)  # MLflow does not keep up: logging goes offline...
    gate.set()
    assert tracker.drain(timeout=30)  # ...and an offline tracker drains at once (it skips the rest)
    tracker.live.offline = False  # ...(here: back online for the check below)
    tracker.trial_result("a", {"alpha": 0.5}, {"epoch": 4, "val/acc": 0.9})
    assert tracker.drain()
    run_id = tracker._runs["a"]
    steps = [m.step for m in MlflowClient(tracker.tracking_uri).get_metric_history(run_id, "val/acc")]
    assert steps == sorted(steps) and steps[-1] == 4


def test_after_mlflow_fell_behind_the_catch_up_waits_for_the_call_in_flight_and_logs_each_trial_once(tracker, monkeypatch):
    """A slow tracking server: the live logging was still creating a trial's run when the end of
    the sweep gave up waiting and caught up itself. It must not create that trial a second run."""
    import threading

    gate = threading.Event()
    real = MlflowClient.create_run

    def slow(self, *args, **kwargs):
        assert gate.wait(30)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_run", slow)
    tracker.trial_started("a", {"alpha": 0.5})
    assert not tracker.drain(timeout=0.2)  # still in create_run: logging goes offline
    impatient = tracker.drain
    monkeypatch.setattr(tracker, "drain", lambda timeout=0.2: impatient(timeout))  # the catch-up gives up waiting, too
    trial = TrialRecord("a", {"alpha": 0.5}, [{"epoch": 1, "val/acc": 0.6}], "TERMINATED")
    catching_up = threading.Thread(target=tracker.sync, args=([trial],))
    catching_up.start()
    catching_up.join(1.0)
    gate.set()  # the server answers the call in flight
    catching_up.join(30)
    assert not catching_up.is_alive()
    runs = _runs(tracker, "trial")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    assert [m.value for m in MlflowClient(tracker.tracking_uri).get_metric_history(runs[0].info.run_id, "val/acc")] == [0.6]


def test_the_parent_run_lists_the_best_trials_with_a_link_comparing_them(tracker):
    """Issue 31: a sweep of thousands of trials is compared from its parent run's description."""
    import json
    from urllib.parse import unquote

    trials = [
        TrialRecord(f"t{i:02d}", {"alpha": i / 20}, [{"epoch": 1, "val/acc": 0.5 + (i * 7 % 13) / 100}], "TERMINATED")
        for i in range(13)
    ]
    trials.append(TrialRecord("bad", {"alpha": 0.9}, [{"epoch": 1, "val/acc": 0.99}], "ERROR", error="boom"))
    tracker.sync(trials)
    ids = tracker.log_top(ranked(trials, Objective("val/acc", "max")), Objective("val/acc", "max"))
    client = MlflowClient(tracker.tracking_uri)
    names = [client.get_run(i).info.run_name for i in ids]
    # best first (ties: the trial started first), failed trials never, at most ten
    expected = sorted((t for t in trials if t.status != "ERROR"), key=lambda t: (-t.history[0]["val/acc"], t.trial_id))
    assert names == [f"trial_{t.trial_id}" for t in expected[:10]]
    tags = client.get_run(tracker.parent_id).data.tags
    assert json.loads(tags[tracking.TOP_TAG]) == ids
    note = tags[tracking.NOTE_TAG]
    assert note.startswith("**Top 10 of 13 trials by val/acc**")
    assert f"#/compare-runs?runs={json.dumps(ids, separators=(',', ':'))}&experiments=" in unquote(note)
    assert f"| 1 | [trial_{expected[0].trial_id}](#/experiments/{tracker.experiment_id}/runs/{ids[0]}) | 0.6200 | 0.55 |" in note

    client.set_tag(tracker.parent_id, tracking.NOTE_TAG, "my notes on this sweep")  # a description the user wrote
    tracker.log_top(ranked(trials[:3], Objective("val/acc", "max")), Objective("val/acc", "max"))
    tags = client.get_run(tracker.parent_id).data.tags
    assert tags[tracking.NOTE_TAG] == "my notes on this sweep" and len(json.loads(tags[tracking.TOP_TAG])) == 3
