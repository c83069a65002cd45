"""Sweeps end to end: a real local Ray, a real MLflow server on 127.0.0.1, queried with MLflow's client."""

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pandas as pd
import pytest
import torch
import yaml
from conftest import free_port, wait_until
from mlflow import MlflowClient

from kdsearch.cli import main
from kdsearch.errors import UserError
from kdsearch.models.checkpoint import load_model
from kdsearch.search.folder import load_trials
from kdsearch.search.record import Objective
from kdsearch.sweeper.run import SweepOptions, run_sweep
from kdsearch.tracking import runs as tracking

pytestmark = pytest.mark.slow  # Ray, subprocesses or a browser: `pytest -m "not slow"` skips them

SPACE = """
name: tiny
fixed:
  method: kd
  dataset: digits
  teacher: resnet8
  teacher_width: 2.0
  teacher_epochs: 3
  student: resnet8
  epochs: {epochs}
  cache_dir: {cache}
space:
  temperature: {{loguniform: [1, 10]}}
  alpha: {{uniform: [0.3, 0.9]}}
  lr: {{loguniform: [3e-2, 1e-1]}}
search:
  num_samples: {samples}
  n_startup_trials: 1
  grace_period: 2
  scheduler: {scheduler}
  seed: 0
"""


def write_space(tmp_path, epochs=3, samples=2, scheduler="asha"):
    path = tmp_path / "tiny.yaml"
    path.write_text(SPACE.format(epochs=epochs, samples=samples, cache=tmp_path / "cache", scheduler=scheduler))
    return path


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1, started the way `kdsearch ui` starts one."""
    store = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(store).search_experiments()  # create the store the server opens
    proc, uri = tracking.start_ui_server(store, free_port())
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_a_sweep_runs_on_the_callers_own_ray_and_leaves_it_running(tmp_path, local_ray, monkeypatch):
    """A program that holds its own Ray (a notebook, a pipeline; here the suite's local Ray) sweeps
    on it and keeps it: kdsearch stops only a Ray it started. That Ray's workers started without
    the user's model module (a folder put on sys.path after Ray started): the trials get it."""
    import ray

    (tmp_path / "callersnet.py").write_text(
        "from torch import nn\n\n\n"
        "def Net(num_classes, in_channels):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(8, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    node = ray.get_runtime_context().get_node_id()
    opts = SweepOptions(
        storage=str(tmp_path / "sweeps"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        verbose=0,
        overrides={"student": "callersnet:Net"},
    )
    summary = run_sweep(write_space(tmp_path, epochs=2, samples=1), opts, log=lambda _: None)
    assert not summary.failures and len(summary.table) == 1 and summary.checkpoint.is_file()
    assert ray.is_initialized() and ray.get_runtime_context().get_node_id() == node
    assert ray.get_runtime_context().gcs_address == local_ray
    assert ray.get(ray.put("still mine")) == "still mine"


def test_sweep_logs_every_trial_once_and_the_best_on_the_parent(tmp_path, mlflow_server, local_ray):
    opts = SweepOptions(storage=str(tmp_path / "sweeps"), tracking_uri=mlflow_server, verbose=0)
    summary = run_sweep(write_space(tmp_path), opts, log=lambda _: None)

    assert len(summary.table) == 2 and summary.checkpoint.is_file()
    assert summary.best_metrics["test/acc"] > 0.5 and summary.best_metrics["compression/ratio"] > 3
    assert (summary.out_dir / "best" / "config.yaml").is_file() and (summary.out_dir / "report" / "trials.csv").is_file()

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kdsearch.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("kdsearch.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    assert len({r.data.tags["kdsearch.trial_id"] for r in trials}) == 2
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"temperature", "alpha", "lr"} <= set(run.data.params) and "fixed" not in run.data.params
        assert run.data.tags["method"] == "kd" and run.data.tags["dataset"] == "digits" and run.data.tags["student"] == "resnet8"
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert sorted(m.step for m in history) == list(range(1, int(run.data.metrics["epoch"]) + 1))  # each epoch once
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {k for k in parent.data.tags if k.startswith("best.")} == {"best.temperature", "best.alpha", "best.lr"}
    for key in ("test/acc", "compression/ratio", "student/params", "student/flops", "latency/cpu_ms", "accuracy/drop"):
        assert key in parent.data.metrics
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "best_config.yaml" in artifacts and "best_student" in artifacts
    versions = client.search_model_versions("name='tiny-student'")
    assert len(versions) == 1 and versions[0].run_id == parent.info.run_id
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {
        "report/trials.csv",
        "report/trials.md",
        "report/best_so_far.png",
        "report/acc_vs_temperature.png",
    } <= report
    assert "report/pareto.png" not in report  # one student size: no accuracy-against-size plot
    for trial in load_trials(tmp_path / "sweeps" / "tiny"):  # trials never see the test split
        assert trial.history and not [k for row in trial.history for k in row if k.startswith("test/")]

    # Ray's own tools read the experiment folder without kdsearch: the fixed settings are in
    # every trial's config, the score kdsearch ranks by in every result.
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(tmp_path / "sweeps" / "tiny"))
    frame = analysis.dataframe(metric="trial/score", mode="max")
    assert len(frame) == 2 and set(frame["config/fixed/method"]) == {"kd"} and set(frame["config/fixed/dataset"]) == {"digits"}
    assert set(frame["config/fixed/teacher"]) == {"resnet8"} and set(frame["config/fixed/student"]) == {"resnet8"}
    best = analysis.get_best_config(metric="trial/score", mode="max")
    # Finished trials keep their metrics' min, max, average and last (what "scope=all" reads),
    # not Tune's running-average windows (ray_internals.LightFinishedTrials: the driver's memory per trial).
    assert analysis.get_best_trial("val/acc", "max", scope="all").config == analysis.get_best_trial("val/acc", "max").config
    assert all("val/acc" in t.metric_analysis and not t.metric_n_steps for t in analysis.trials)
    assert set(summary.best_params) == {"temperature", "alpha", "lr"}  # the searched values, as the summary prints them
    assert best["fixed"]["method"] == "kd" and {k: best[k] for k in summary.best_params} == summary.best_params
    assert max(frame["trial/score"]) == pytest.approx(summary.table.iloc[0]["best val/acc"])
    table = pd.read_csv(tmp_path / "sweeps" / "tiny" / "report" / "trials.csv")
    assert table["latency/cpu_ms"].notna().all() and table["latency/cpu_ms"].nunique() == 1  # measured once, in the driver

    # What users do next: export the best student, from the sweep folder or from the parent run.
    out = tmp_path / "export"
    assert main(["export", str(summary.out_dir), "--format", "safetensors", "pt", "torchscript", "onnx", "--out", str(out)]) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["metrics"]["test/acc"] == summary.best_metrics["test/acc"] and "compression/ratio" in card["metrics"]
    assert set(card["files"]) == {"safetensors", "pt", "torchscript", "onnx"}
    assert (
        main(["export", parent.info.run_id, "--tracking-uri", mlflow_server, "--format", "onnx", "--out", str(tmp_path / "e2")])
        == 0
    )
    assert (tmp_path / "e2" / "model.onnx").is_file()
    # Any trial, not only the best: its kept checkpoint; an unknown id lists the trials.
    some_trial = summary.table["trial"].iloc[-1]
    assert main(["export", str(summary.out_dir), "--trial", some_trial, "--format", "pt", "--out", str(tmp_path / "t")]) == 0
    assert main(["export", str(summary.out_dir), "--trial", "nope", "--format", "pt", "--out", str(tmp_path / "t2")]) == 2
    # The Optuna study is kept in the sweep folder, every trial in it.
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{summary.out_dir / 'optuna.db'}")
    assert len([t for t in study.trials if t.state.is_finished()]) == 2  # (one ASHA stopped: pruned)
    # How to reproduce it: beside the best student and on the parent run.
    record = json.loads((summary.out_dir / "best" / "provenance.json").read_text())
    assert record["versions"]["torch"] and parent.data.tags["kdsearch.version.torch"] == record["versions"]["torch"]
    assert "kdsearch.command" in parent.data.tags
    assert main(["report", "tiny", "--storage", str(tmp_path / "sweeps"), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "best_so_far.png").is_file() and (tmp_path / "r" / "trials.md").is_file()

    # Re-running the best config trains no teacher (it names the sweep's, by path and hash) and
    # repeats the best trial epoch by epoch (same seed, one thread as the trial had).
    best_config = summary.out_dir / "best" / "config.yaml"
    assert "teacher_sha256" in best_config.read_text()
    rerun = subprocess.run(
        [sys.executable, "-m", "kdsearch", "train", "--config", str(best_config), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0 and "training teacher" not in rerun.stderr, rerun.stderr
    best_id = json.loads((summary.out_dir / "sweep.json").read_text())["best_trial"]
    trial_epochs = [
        json.loads(line)["val/acc"] for line in (summary.out_dir / f"trial_{best_id}" / "result.json").read_text().splitlines()
    ]
    rerun_epochs = [line.split("val/acc ")[1].split()[0] for line in rerun.stderr.splitlines() if line.startswith("epoch")]
    assert rerun_epochs[: len(trial_epochs)] == [f"{v:.4f}" for v in trial_epochs], (rerun_epochs, trial_epochs)


def test_unreachable_tracking_server_fails_before_any_trial(tmp_path):
    # MLflow's own retries (7, backing off) took about 6 minutes to give up: the first contact
    # is a short probe, so the user's settings (here MLflow's defaults) only govern live logging.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    uri = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdsearch",
            "sweep",
            str(write_space(tmp_path)),
            "--storage",
            str(tmp_path / "sweeps"),
            "--tracking-uri",
            uri,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,  # a bound on the test, not a measurement: the old path took minutes
    )
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert (
        line.startswith(f"kdsearch: error: MLflow tracking at {uri} is unreachable (")
        and "start the server or pass another --tracking-uri" in line
    )
    assert not (tmp_path / "sweeps" / "tiny").exists()


def _finished_trials(sweep_dir: Path, epochs: int) -> list[Path]:
    done = []
    for result in sweep_dir.glob("trial_*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines and (lines[-1].get("epoch") == epochs or lines[-1].get("done")):
            done.append(result)
    return done


def _epochs(text: str) -> list[tuple]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [(r.get("epoch"), r.get("training_iteration"), r.get("done")) for r in lines]


EPOCHS = 20  # about 7 s a trial here: long enough to interrupt the second one (polled every 0.05 s)


def test_resume_continues_an_interrupted_sweep_without_rerunning_finished_trials(tmp_path):
    space = write_space(tmp_path, epochs=EPOCHS, samples=3, scheduler="fifo")
    storage, db = tmp_path / "sweeps", f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable,
        "-m",
        "kdsearch",
        "sweep",
        str(space),
        "--storage",
        str(storage),
        "--tracking-uri",
        db,
        "--max-concurrent",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def second_trial_training():  # one trial finished and another one has reported an epoch
        results = [p for p in (storage / "tiny").glob("trial_*/result.json") if p.read_text().strip()]
        return proc.poll() is not None or (_finished_trials(storage / "tiny", EPOCHS) and len(results) >= 2)

    wait_until(second_trial_training, 240, "the second trial to report its first epoch")
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, as a crash would
    proc.wait()
    finished = {p.parent.name: p.read_text() for p in _finished_trials(storage / "tiny", EPOCHS)}
    assert 1 <= len(finished) <= 2  # one or two finished, the rest left for the resume

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # same name without --resume: refused
    assert again.returncode == 2 and "add --resume" in again.stderr
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "top trials of tiny (3 in all)" in resumed.stdout
    model, payload = load_model(storage / "tiny" / "best" / "student.pt")  # the best checkpoint is whole
    assert payload["metrics"]["test/acc"] > 0.5
    for name, text in finished.items():  # finished trials were not run again
        now = (storage / "tiny" / name / "result.json").read_text()
        # first the epochs and iterations, short enough for CI's log to say what ran again; then the text
        assert _epochs(now) == _epochs(text), f"{name} ran again on the resume"
        assert now == text
    import optuna

    # the study optuna-dashboard opens holds every trial, those of the first run and of the resumed one
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{storage / 'tiny' / 'optuna.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 3
    client = MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    # each Optuna trial names its kdsearch trial and the MLflow run that logged it, scored as the report scores it
    run_of = {r.data.tags["kdsearch.trial_id"]: r.info.run_id for r in runs if r.data.tags.get("kdsearch.role") == "trial"}
    told = {t.user_attrs["kdsearch.trial_id"]: t for t in study.trials}
    assert set(told) == set(run_of) and all(t.user_attrs.get("kdsearch.mlflow_run_id") == run_of[i] for i, t in told.items())
    for trial in load_trials(storage / "tiny"):
        assert told[trial.trial_id].value == trial.score(Objective("val/acc", "max"))
    trial_ids = [r.data.tags["kdsearch.trial_id"] for r in runs if r.data.tags.get("kdsearch.role") == "trial"]
    assert len(trial_ids) == 3 == len(set(trial_ids))
    for run in runs:
        if run.data.tags.get("kdsearch.role") == "trial":
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
            assert len(steps) == len(set(steps))  # no epoch logged twice across the interruption

    # a new sweep warm-started from this one: its Optuna study holds these 3 trials before its own
    warm_cmd = cmd + ["--name", "tiny2", "--warm-start", "tiny", "--num-samples", "1", "--set", "epochs=2"]
    warm = subprocess.run(warm_cmd, capture_output=True, text=True)
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert json.loads((storage / "tiny2" / "sweep.json").read_text())["warm_start"]["trials"] == 3
    import optuna

    study = optuna.load_study(study_name="tiny2", storage=f"sqlite:///{storage / 'tiny2' / 'optuna.db'}")
    assert len(study.trials) == 4 and study.trials[3].params.keys() == {"temperature", "alpha", "lr"}


def test_resume_with_nothing_to_resume(tmp_path):
    opts = SweepOptions(storage=str(tmp_path / "sweeps"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", resume=True, verbose=0)
    with pytest.raises(UserError, match="nothing to resume at .*: run the sweep without --resume first"):
        run_sweep(write_space(tmp_path), opts, log=lambda _: None)


def test_two_objectives_run_nsga2_and_report_both(tmp_path, local_ray):
    space = tmp_path / "mo.yaml"
    space.write_text(f"""
name: mo
fixed: {{method: ce, dataset: digits, epochs: 2, cache_dir: {tmp_path / "cache"}}}
space:
  student_width: {{choice: [0.5, 1.0]}}
  lr: {{loguniform: [3e-2, 1e-1]}}
search:
  num_samples: 3
  objectives: [{{val/acc: max}}, {{latency/cpu_ms: min}}]
""")
    summary = run_sweep(
        space,
        SweepOptions(storage=str(tmp_path / "s"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", verbose=0, register=False),
        log=lambda _: None,
    )
    table = summary.table
    assert table["student/params"].notna().all() and table["latency/cpu_ms"].notna().all() and len(table) == 3
    # The Pareto front is listed with the ids to export.
    assert summary.pareto and set(summary.pareto) <= set(table["trial"])
    from kdsearch.sweeper.summary import format_sweep_summary

    assert "Pareto front (val/acc, latency/cpu_ms): trials " in format_sweep_summary(summary)
    # The study behind it (NSGA-II's sampler does not pickle: the searcher Tune pickles holds none)
    import optuna

    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{summary.out_dir / 'optuna.db'}")
    assert study.metric_names == ["val/acc", "latency/cpu_ms"] and len(study.trials) >= 3
    # Latency is timed once per architecture in the driver: trials of one width report one value.
    for _, group in table.groupby("student_width"):
        assert group["latency/cpu_ms"].nunique() == 1, table


def test_more_gpus_than_the_cluster_has_is_refused(tmp_path, local_ray):
    opts = SweepOptions(storage=str(tmp_path / "s"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", gpus_per_trial=0.5, verbose=0)
    with pytest.raises(UserError, match=r"--gpus-per-trial 0.5 but the Ray cluster has 0 GPUs"):
        run_sweep(write_space(tmp_path), opts, log=lambda _: None)


def test_tunes_loop_waits_for_events_not_ten_times_a_second(tmp_path, monkeypatch, local_ray):
    """Between events Ray Tune's loop woke every 0.1 s (~1.8% of a core of Python in the driver
    while trials train, preempting them where they fill the cores); the sweep has it wait up
    to a second, and every trial still runs to its end."""
    import ray

    waits = []
    real_wait = ray.wait

    def spy(*args, **kwargs):
        caller = sys._getframe(1).f_code
        if caller.co_name == "next" and "actor_manager" in caller.co_filename:
            waits.append(kwargs.get("timeout"))
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(ray, "wait", spy)
    space = tmp_path / "calm.yaml"
    space.write_text(
        f"name: calm\nfixed: {{method: ce, dataset: digits, epochs: 2, cache_dir: {tmp_path / 'cache'}}}\n"
        "space: {lr: {loguniform: [3e-2, 1e-1]}}\nsearch: {num_samples: 2, seed: 0}\n"
    )
    summary = run_sweep(
        space,
        SweepOptions(storage=str(tmp_path / "s"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", verbose=0, register=False),
        log=lambda _: None,
    )
    assert len(summary.table) == 2 and (summary.table["epochs run"] == 2).all() and (summary.table["status"] == "ok").all()
    timed = [t for t in waits if t is not None]
    assert timed and min(timed) >= 1.0, sorted(timed)[:5]


def test_a_sweep_comparing_kd_and_dkd_with_a_scheduled_alpha_runs_from_the_command_line(tmp_path):
    """One sweep over two methods, each with its own settings and a scheduled alpha: it exports and
    registers its best student, names the best method, and MLflow holds each trial's alpha per epoch."""
    space = tmp_path / "kd-dkd.yaml"
    space.write_text(f"""
name: kd-dkd
fixed: {{dataset: digits, epochs: 3, teacher_epochs: 5, cache_dir: {tmp_path / "cache"}}}
space:
  method: {{choice: [kd, dkd]}}
  kd: {{alpha: {{schedule: linear, start: {{uniform: [0.5, 1.0]}}, end: {{uniform: [0.0, 0.5]}}}}}}
  dkd: {{alpha: {{schedule: warmup, epochs: 1, value: {{uniform: [0.5, 2.0]}}}}, beta: {{uniform: [1, 8]}}}}
  lr: {{loguniform: [3e-2, 1e-1]}}
search: {{num_samples: 4, sampler: random, scheduler: fifo, seed: 1}}
""")
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "sweeps"
    cmd = [sys.executable, "-m", "kdsearch"]
    run = subprocess.run(
        [*cmd, "sweep", str(space), "--storage", str(storage), "--tracking-uri", db, "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    methods = [json.loads((p / "params.json").read_text())["method"] for p in (storage / "kd-dkd").glob("trial_*")]
    assert sorted(set(methods)) == ["dkd", "kd"], methods
    assert "best method: " in run.stdout
    report = (storage / "kd-dkd" / "report" / "methods.md").read_text()
    assert "| kd " in report and "| dkd " in report
    assert (storage / "kd-dkd" / "report" / "schedules.png").is_file()

    client = MlflowClient(db)
    experiment = client.get_experiment_by_name("kd-dkd").experiment_id
    trial_runs = [r for r in client.search_runs([experiment]) if r.data.tags.get("kdsearch.role") == "trial"]
    assert len(trial_runs) == 4
    for r in trial_runs:
        curve = [m.value for m in sorted(client.get_metric_history(r.info.run_id, "schedule/alpha"), key=lambda m: m.step)]
        assert len(curve) == 3, r.data.params
        if r.data.params["method"] == "kd":  # linear from start to end: falling
            assert curve[0] > curve[1] > curve[2] and "kd.alpha.start" in r.data.params and "dkd.beta" not in r.data.params
        else:  # warmed up over the first of 3 epochs, then held
            assert curve[0] < curve[1] == curve[2] and "dkd.beta" in r.data.params and "kd.alpha.start" not in r.data.params
    parent = next(r for r in client.search_runs([experiment]) if r.data.tags.get("kdsearch.role") == "sweep")
    assert (
        parent.data.tags["best.method"] in ("kd", "dkd")
        and f"{parent.data.tags['best.method']}/best_val/acc" in parent.data.metrics
    )
    assert str(client.get_model_version_by_alias("kd-dkd-student", "champion").version) == "1"
    best = yaml.safe_load((storage / "kd-dkd" / "best" / "config.yaml").read_text())
    assert best["method_args"]["alpha"]["schedule"] in ("linear", "warmup")
    # what the sweep says to run next, run as printed (an image of a digit for IMAGE...)
    said = run.stdout.split("\nnext:\n", 1)[1].splitlines()
    export, predict = (shlex.split(line, comments=True) for line in said[:2])
    assert export[:2] == ["kdsearch", "export"] and predict[:2] == ["kdsearch", "predict"], said
    exported = subprocess.run([*cmd, *export[1:]], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    from PIL import Image
    from sklearn.datasets import load_digits

    Image.fromarray((load_digits().images[0] * 255 / 16).round().astype("uint8")).save(tmp_path / "digit.png")
    predicted = subprocess.run(
        [*cmd, *[a if a != "IMAGE..." else "digit.png" for a in predict[1:]], "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert predicted.returncode == 0 and "digit.png" in predicted.stdout, predicted.stderr
    out = tmp_path / "kd-dkd-student"
    card = json.loads((out / "model.json").read_text())
    assert (
        card["config"]["method_args"]["alpha"] == best["method_args"]["alpha"]
        if "config" in card
        else (out / "model.onnx").is_file()
    )


@pytest.mark.parametrize("space", ["fashion_mnist-methods", "fashion_mnist-kd-schedules"])
def test_the_shipped_methods_and_schedules_spaces_run_on_digits(space, tmp_path):
    """The README's example spaces, as a user would try them first: --smoke on digits."""
    root = Path(__file__).resolve().parent.parent
    cmd = [
        sys.executable,
        "-m",
        "kdsearch",
        "sweep",
        str(root / "search_spaces" / f"{space}.yaml"),
        "--smoke",
        "--set",
        "dataset=digits",
        "--set",
        "train_subset=null",
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
        "--storage",
        str(tmp_path / "s"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--quiet",
        "--no-register",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    verdict = [line for line in run.stdout.splitlines() if line.startswith("smoke check:")]
    assert len(verdict) == 1 and verdict[0].endswith("the set-up learns"), run.stdout[-2000:]
    trials = load_trials(tmp_path / "s" / space)
    assert len(trials) == 2 and all(t.failure is None for t in trials)


def test_a_sweep_over_every_method_runs_from_the_cli_and_exports_no_module_a_method_trained(tmp_path):
    """Issue 39: method: {choice: [every method]}, each with its own settings, from the command line;
    the trials of the methods that train modules of their own (FitNet's regressor, CRD's heads and
    memory banks, ReviewKD's fusions) export the student's parameters alone, in every format."""
    from safetensors.torch import load_file

    from kdsearch.methods import METHODS
    from kdsearch.models import build_model

    root = Path(__file__).resolve().parent.parent
    db = f"sqlite:///{tmp_path / 'm.db'}"
    cmd = [sys.executable, "-m", "kdsearch"]
    space = root / "search_spaces" / "digits-methods.yaml"
    run = subprocess.run(
        [
            *cmd,
            "sweep",
            str(space),
            "--set",
            f"cache_dir={tmp_path / 'cache'}",
            "--storage",
            str(tmp_path / "s"),
            "--tracking-uri",
            db,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    trials = load_trials(tmp_path / "s" / "digits-methods")
    assert sorted(t.params["method"] for t in trials) == sorted(METHODS) and all(t.failure is None for t in trials)
    by_method = {t.params["method"]: t for t in trials}
    assert by_method["crd"].params["crd.negatives"] == 256 and by_method["reviewkd"].params["reviewkd.weight"] == 2.0
    plain = build_model("resnet8", 10, 1).state_dict()
    for method in ("fitnet", "crd", "reviewkd"):
        out = tmp_path / method
        trial = by_method[method].trial_id
        formats = ["--format", "safetensors", "onnx", "torchscript", "pt", "--out", str(out)]
        assert main(["export", "digits-methods", "--storage", str(tmp_path / "s"), "--trial", trial, *formats]) == 0
        assert set(load_file(out / "model.safetensors")) == set(plain)
        assert set(torch.load(out / "model.pt", weights_only=True)) == set(plain)
        assert set(torch.jit.load(out / "model.torchscript.pt").state_dict()) == set(plain)
        onnx_names = {i.name for i in onnx.load(out / "model.onnx").graph.initializer}
        assert not [n for n in onnx_names if any(w in n for w in ("regressor", "heads", "memory", "fusions"))], onnx_names
    client = MlflowClient(db)
    assert len(client.search_model_versions("name='digits-methods-student'")) == 1


def test_trials_checkpoint_at_rungs_and_end_and_tune_saves_its_state_without_one_save_per_trial(tmp_path, monkeypatch, local_ray):
    """Issue 31: Ray Tune saved its whole experiment state (every trial, the searcher) at every trial
    checkpoint while ``num_to_keep`` was set: work per trial that grew with the sweep. Counted here:
    Tune's saves of the experiment state, and each trial's checkpoints (issue 30: fewer bytes)."""
    from ray import tune

    from kdsearch.ray_trials import runner

    saves = []

    class CountSaves(tune.Callback):
        def get_state(self):  # Tune asks every callback for its state at each save of the experiment
            saves.append(1)
            return {}

    made = runner._run_config
    monkeypatch.setattr(
        runner, "_run_config", lambda *a, **k: (lambda c: (c.callbacks.append(CountSaves()), c)[1])(made(*a, **k))
    )
    trials = 16
    space = tmp_path / "many.yaml"
    raw = yaml.safe_load(SPACE.format(epochs=3, samples=trials, cache=tmp_path / "cache", scheduler="asha"))
    raw["search"].update(sampler="random", grace_period=2, reduction_factor=2)
    space.write_text(yaml.safe_dump(raw))
    opts = SweepOptions(
        storage=str(tmp_path / "s"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", verbose=0, register=False, max_concurrent=2
    )
    summary = run_sweep(space, opts, log=lambda _: None)
    assert len(summary.table) == trials
    assert len(saves) < trials / 2, f"{len(saves)} saves of the experiment state for {trials} trials"  # was one or more a trial

    from kdsearch.models.checkpoint import trial_student

    stopped = 0
    for record in load_trials(summary.out_dir):
        epochs = len(record.history)
        folders = sorted(Path(record.path).glob("checkpoint_*"))
        # a trial ASHA stopped at its rung (epoch 2): one checkpoint; one that went on: the rung's and the end's
        assert len(folders) == (1 if epochs == 2 else 2), (epochs, folders)
        # the student file is written once, at a trial's end; a rung's checkpoint holds the state alone
        assert [(f / "student.pt").is_file() for f in folders] == [False] * (len(folders) - 1) + [epochs == 3], folders
        assert all((f / "state.pt").is_file() for f in folders)
        stopped += epochs == 2
        best_epoch = max(record.history, key=lambda h: (h["val/acc"], h["epoch"]))
        # as the sweep copies its best trial's student (here from the state where ASHA stopped the trial)
        copied = runner.copy_student(str(folders[-1]), tmp_path / "copied" / record.trial_id / "student.pt")
        _, payload = load_model(trial_student(folders[-1]))  # a stopped trial's: written from its state when read
        assert payload["metrics"]["val/acc"] == best_epoch["val/acc"]  # the last checkpoint holds the best epoch's student
        assert payload["model"]["arch"] == "resnet8" and payload["config"]["method"] == "kd"
        assert load_model(copied)[1]["metrics"] == payload["metrics"]
    assert 0 < stopped < trials  # both kinds were checked
    # the best student is the best trial's best epoch, whichever epoch that was
    _, payload = load_model(summary.checkpoint)
    assert payload["metrics"]["val/acc"] == max(summary.table["best val/acc"])


def test_trials_the_shared_teacher_outputs_do_not_serve_say_why_once(tmp_path, local_ray):
    # The driver computes the teacher's outputs once for the fixed settings; a trial whose searched
    # seed gives other crops and flips cannot look them up and runs its teacher live: said, once.
    space = tmp_path / "seeds.yaml"
    space.write_text(f"""
name: seeds
fixed: {{method: kd, dataset: digits, teacher: resnet8, teacher_epochs: 1, epochs: 1, flip: true, cache_dir: {tmp_path / "cache"}}}
space:
  seed: {{choice: [0, 1, 2]}}
search: {{sampler: grid, scheduler: fifo}}
""")
    logs = []
    summary = run_sweep(
        space,
        SweepOptions(storage=str(tmp_path / "s"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", verbose=0, register=False),
        log=logs.append,
    )
    assert any("computed once for all trials" in line for line in logs)
    live = [line for line in logs if "runs its teacher live" in line]
    assert len(live) == 2, logs  # seeds 1 and 2: one reason each
    assert (
        "not from the shared outputs: the cache has the views of seed 0, crop_pad 1, flip True; this run: seed 1"
        in live[0] + live[1]
    )
    by_seed = {t.params["seed"]: t.history[-1].get("trial/teacher_live") for t in load_trials(tmp_path / "s" / "seeds")}
    assert by_seed[0] is None and "seed 2" in by_seed[2]
    assert set(summary.table["status"]) == {"ok"}
