"""The searcher kdsearch gives Ray Tune, driven directly (no Ray cluster needed)."""

from pathlib import Path

import pytest

from kdsearch.errors import UserError
from kdsearch.ray_trials import make_searcher
from kdsearch.search.options import SweepOptions
from kdsearch.search.record import Objective, TrialRecord
from kdsearch.search.space import parse_sweep
from kdsearch.search.study import warm_start


def _drive(spec, trials):
    searcher = make_searcher(spec)
    seen = []
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        seen.append(tuple(sorted(config.items())))
        result = {"val/acc": 0.5 + 0.01 * config["alpha"], "student/params": 1000.0 * config["student_width"]}
        searcher.on_trial_complete(f"t{i}", result={**result, "training_iteration": 3})
    return seen


def test_no_settings_are_trained_twice_even_by_nsga2_with_a_small_population():
    # Two objectives, a small discrete space and a population of 3: NSGA-II repeats itself when left alone.
    spec = parse_sweep(
        {
            "fixed": {"method": "kd", "dataset": "digits"},
            "space": {"alpha": {"choice": [0.3, 0.6, 0.9]}, "student_width": {"choice": [0.5, 1.0]}},
            "search": {"num_samples": 6, "objectives": [{"val/acc": "max"}, {"student/params": "min"}], "seed": 0},
        },
        "nsga.yaml",
    )
    seen = _drive(spec, 6)
    assert len(set(seen)) == 6, seen


def test_a_used_up_space_repeats_rather_than_stalls():
    spec = parse_sweep(
        {
            "fixed": {"method": "kd", "dataset": "digits"},
            "space": {"alpha": {"choice": [0.3, 0.6]}, "student_width": {"choice": [1.0]}},
            "search": {"num_samples": 4, "sampler": "random", "seed": 0},
        },
        "tiny.yaml",
    )
    seen = _drive(spec, 4)
    assert len(seen) == 4 and len(set(seen)) == 2


def test_architecture_metrics_are_measured_once_per_architecture_in_the_driver():
    from kdsearch.data import load_dataset
    from kdsearch.ray_trials.trainable import architecture_metrics

    data = load_dataset("digits")
    raw = {
        "fixed": {"method": "kd", "dataset": "digits"},
        "space": {"student_width": {"choice": [0.5, 1.0]}, "alpha": {"uniform": [0, 1]}},
        "search": {"num_samples": 4, "objectives": [{"val/acc": "max"}, {"latency/cpu_ms": "min"}]},
    }
    measured = architecture_metrics(parse_sweep(raw, "lat.yaml"), data)
    assert len(measured) == 2 and all(m["latency/cpu_ms"] > 0 for m in measured.values())
    params = sorted(m["student/params"] for m in measured.values())
    assert params[0] < params[1]
    raw["space"]["student_width"] = {"uniform": [0.5, 1.0]}  # a continuous range: the trials measure
    assert architecture_metrics(parse_sweep(raw, "lat.yaml"), data) == {}


def _alpha_spec(space=None, **search):
    return parse_sweep(
        {
            "fixed": {"method": "kd", "dataset": "digits"},
            "space": space or {"alpha": {"uniform": [0, 1]}},
            "search": {"num_samples": 8, "sampler": "tpe", "n_startup_trials": 4, "seed": 0, **search},
        },
        "warm.yaml",
    )


def _first_alphas(spec, study, n=4):
    searcher = make_searcher(spec, *study)
    return [searcher.suggest(f"t{i}")["alpha"] for i in range(n)]


def test_a_warm_started_tpe_sweep_models_its_first_trials_on_the_earlier_sweep(tmp_path):
    # An earlier sweep found alpha near 0.9 best. Cold, TPE's first 4 trials are random draws; warm
    # started with those 20 results, the first 4 already go where the earlier sweep did well.
    earlier = [
        TrialRecord(f"e{i}", {"alpha": a, "temperature": 4.0}, [{"val/acc": 1 - (a - 0.9) ** 2, "epoch": 3}], "TERMINATED")
        for i, a in enumerate(x / 19 for x in range(20))
    ]
    manifest = {"name": "earlier", "space": {"alpha": {}, "temperature": {}}, "objectives": [["val/acc", "max"]]}
    spec = _alpha_spec()
    assert warm_start(spec, ("new", tmp_path / "warm.db"), earlier, manifest) == 20
    warm = _first_alphas(spec, ("new", tmp_path / "warm.db"))
    cold = _first_alphas(spec, ("cold", tmp_path / "cold.db"))
    assert max(abs(a - 0.9) for a in warm) < 0.2, warm
    assert sum(abs(a - 0.9) for a in warm) < sum(abs(a - 0.9) for a in cold) / 2, (warm, cold)


def test_a_warm_start_that_cannot_inform_the_search_is_one_line(tmp_path):
    earlier = [TrialRecord("e0", {"lr": 0.1}, [{"val/acc": 0.9}], "TERMINATED")]
    study = ("new", tmp_path / "w.db")
    with pytest.raises(UserError, match="it searched lr, this sweep alpha: no parameter in common to learn from"):
        warm_start(_alpha_spec(), study, earlier, {"name": "other", "space": {"lr": {}}, "objectives": [["val/acc", "max"]]})
    with pytest.raises(UserError, match="warm-start from a sweep with the same objectives"):
        warm_start(_alpha_spec(), study, earlier, {"name": "other", "space": {"alpha": {}}, "objectives": [["val/loss", "min"]]})
    with pytest.raises(UserError, match="a grid has none"):
        warm_start(_alpha_spec({"alpha": {"choice": [0.1, 0.9]}}, sampler="grid", num_samples=2), study, earlier, {"name": "o"})


def test_as_many_trials_start_at_once_as_the_cluster_runs_and_the_settings_go_when_the_sweep_ends(monkeypatch, tmp_path):
    """Ray Tune starts one trial at a time under a searcher unless it is told how many may be
    starting at once: the sweep tells it what the cluster fits (4 trials at 0.25 GPU on one GPU),
    for the sweep's time only (a second sweep in the same process must not inherit it)."""
    import os

    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search import SearchGenerator

    from kdsearch.ray_trials import cluster, runner

    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    assert cluster.trials_at_once(2, 0.25) == 4
    assert cluster.trials_at_once(1, 0) == 16
    assert cluster.trials_at_once(2, 0.3) == 3
    assert cluster.trials_at_once(32, 0) == 1

    captured = {}

    class Captured(Exception):
        pass

    class FakeTuner:
        def __init__(self, trainable, *, param_space, tune_config, run_config):
            captured["config"] = tune_config
            captured["env"] = {k: os.environ.get(k) for k in ("TUNE_MAX_PENDING_TRIALS_PG", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")}
            captured["pending"] = _get_max_pending_trials(SearchGenerator(tune_config.search_alg))
            raise Captured

    monkeypatch.setattr(runner.tune, "Tuner", FakeTuner)
    monkeypatch.setattr(runner.tune, "with_parameters", lambda trainable, **kw: trainable)
    monkeypatch.setattr(runner.tune, "with_resources", lambda trainable, resources: trainable)
    monkeypatch.setattr(runner, "payload", lambda data: None)
    monkeypatch.setattr(runner, "architecture_metrics", lambda spec, data: {})
    monkeypatch.setattr(cluster, "check_storage", lambda storage, shared: None)
    spec = parse_sweep(
        {
            "fixed": {"method": "kd", "dataset": "digits", "epochs": 2},
            "space": {"alpha": {"uniform": [0, 1]}},
            "search": {"num_samples": 8, "seed": 0},
        },
        "at_once.yaml",
    )
    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)
    with pytest.raises(Captured):
        runner.run_trials(spec, None, None, SweepOptions(cpus_per_trial=2, gpus_per_trial=0.25), storage=str(tmp_path), name="s")
    assert captured["config"].max_concurrent_trials is None  # not a cap: an autoscaling cluster still grows
    assert captured["env"] == {"TUNE_MAX_PENDING_TRIALS_PG": "4", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    assert captured["pending"] == 4  # what Tune then does under the searcher: four trials starting at once, not one
    assert "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ and "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ
    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "7")  # the user's own setting wins, and stays
    with pytest.raises(Captured):
        runner.run_trials(spec, None, None, SweepOptions(), storage=str(tmp_path), name="s")
    assert captured["env"]["TUNE_MAX_PENDING_TRIALS_PG"] == "7" and os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "7"


def test_the_study_stays_in_memory_while_trials_run_and_is_written_when_they_end(tmp_path):
    """No SQLite write per trial in Tune's loop; optuna-dashboard still gets the whole study,
    with the metric names and each trial's kdsearch trial id and MLflow run."""
    import optuna

    spec = parse_sweep(
        {"fixed": {"method": "kd", "dataset": "digits"}, "space": {"alpha": {"uniform": [0, 1]}}, "search": {"seed": 0}},
        "mem.yaml",
    )
    db = tmp_path / "optuna.db"
    searcher = make_searcher(spec, "mem", db, max_epochs=2)
    for i in range(3):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", result={"val/acc": config["alpha"], "training_iteration": 2})
    searcher.suggest("t3")  # still running when the sweep ends
    assert not db.exists()
    assert searcher.write_study({"t0": "run0", "t2": "run2"})
    study = optuna.load_study(study_name="mem", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert study.metric_names == ["val/acc"]
    assert [t.user_attrs.get("kdsearch.trial_id") for t in study.trials] == ["t0", "t1", "t2"]
    assert [t.user_attrs.get("kdsearch.mlflow_run_id") for t in study.trials] == ["run0", None, "run2"]
    assert not list(tmp_path.glob("*.partial"))


def test_a_trial_asha_stopped_is_pruned_for_tpe_not_compared_with_finished_ones():
    """Told as complete, a trial ASHA stopped after 1 of 5 epochs competed with trials that
    trained all 5: under a one-cycle schedule the learning rates that end best look worst after
    1 epoch, and TPE learned the rung's noise. It is told as pruned at the epoch it reached."""
    import optuna

    spec = _alpha_spec(num_samples=4)
    searcher = make_searcher(spec, max_epochs=5)
    for i, (epochs, acc) in enumerate([(1, 0.2), (5, 0.8), (3, 0.6), (5, 0.7)]):
        searcher.suggest(f"t{i}")
        for e in range(1, epochs):  # as Tune does: the result that ends a trial goes to on_trial_complete only
            searcher.on_trial_result(f"t{i}", {"val/acc": acc - 0.1, "training_iteration": e})
        searcher.on_trial_complete(f"t{i}", result={"val/acc": acc, "training_iteration": epochs})
    trials = searcher.study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE] * 2
    # ranked at the epoch each was stopped, on the accuracy ASHA judged there
    assert trials[0].intermediate_values == {1: 0.2} and trials[2].intermediate_values == {1: 0.5, 2: 0.5, 3: 0.6}
    assert [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE] == [0.8, 0.7]


def test_a_trial_is_scored_by_its_best_epoch_in_optuna_as_in_the_report():
    """One score per trial: a quickstart trial scored 0.9722 in Optuna (its last epoch) and
    0.9861 in the report (its best). Optuna is told the best epoch's value now."""
    from kdsearch.search.record import ranked

    spec = _alpha_spec(num_samples=2)
    searcher = make_searcher(spec, max_epochs=3)
    history = {"t0": [0.90, 0.9861, 0.9722], "t1": [0.95, 0.97, 0.98]}
    for trial_id, accs in history.items():
        searcher.suggest(trial_id)
        for epoch, acc in enumerate(accs[:-1], start=1):
            searcher.on_trial_result(trial_id, {"val/acc": acc, "training_iteration": epoch})
        searcher.on_trial_complete(trial_id, result={"val/acc": accs[-1], "training_iteration": len(accs)})
    assert [t.value for t in searcher.study.get_trials()] == [0.9861, 0.98]
    records = [TrialRecord(t, {}, [{"val/acc": a} for a in accs], "TERMINATED") for t, accs in history.items()]
    assert [r.score(Objective("val/acc", "max")) for r in records] == [0.9861, 0.98]
    assert [r.trial_id for r in ranked(records, Objective("val/acc", "max"))] == ["t0", "t1"]


def test_a_tie_goes_to_the_trial_that_started_first_and_failed_trials_rank_last():
    from kdsearch.search.record import ranked

    records = [
        TrialRecord("abc_00002", {}, [{"val/acc": 0.9}], "TERMINATED"),
        TrialRecord("abc_00000", {}, [{"val/acc": 0.95, "trial/diverged": 1.0}], "TERMINATED"),
        TrialRecord("abc_00001", {}, [{"val/acc": 0.9}], "TERMINATED"),
        TrialRecord("abc_00003", {}, [{"val/acc": 0.8}], "TERMINATED"),
    ]
    assert [r.trial_id for r in ranked(records, Objective("val/acc", "max"))] == [
        "abc_00001",
        "abc_00002",
        "abc_00003",
        "abc_00000",
    ]
    assert [r.trial_id for r in ranked(records[2:], Objective("val/acc", "min"))] == ["abc_00003", "abc_00001"]


@pytest.mark.parametrize(
    "search",
    [
        {"sampler": "tpe"},
        {"sampler": "random"},
        {"sampler": "grid"},
        {"sampler": "nsga2", "objectives": [{"val/acc": "max"}, {"student/params": "min"}]},
    ],
    ids=["tpe", "random", "grid", "nsga2"],
)
def test_the_searcher_tune_receives_pickles_for_every_sampler_and_carries_its_study(search, tmp_path):
    """Ray Tune pickles its searcher with the experiment (tuner.pkl) and saves its state every
    checkpoint. Optuna 5.1's NSGA-II holds a threading lock, and every two-objective sweep
    crashed inside tune.Tuner(...). The study is rebuilt from plain data instead."""
    import pickle

    from ray import cloudpickle

    space = {"alpha": {"choice": [0.1, 0.5, 0.9]}, "student_width": {"choice": [0.5, 1.0]}}
    spec = parse_sweep(
        {"fixed": {"method": "kd", "dataset": "digits"}, "space": space, "search": {"num_samples": 6, "seed": 0, **search}},
        "pickle.yaml",
    )
    searcher = make_searcher(spec, "p", tmp_path / "optuna.db", max_epochs=2)
    pickle.loads(cloudpickle.dumps(searcher))  # before any trial, as tune.Tuner pickles it
    told = {}
    for i in range(3):
        config = searcher.suggest(f"t{i}")
        told[f"t{i}"] = config
        searcher.on_trial_result(f"t{i}", {"val/acc": 0.5, "student/params": 10.0, "training_iteration": 1})
        if i < 2:
            searcher.on_trial_complete(f"t{i}", result={"val/acc": 0.6, "student/params": 10.0, "training_iteration": 2})
    searcher.save(str(tmp_path / "state.pkl"))
    again = pickle.loads(cloudpickle.dumps(searcher))
    again.restore(str(tmp_path / "state.pkl"))

    def trained(searcher):  # (a draw that repeated trained settings is told their result, marked as a repeat)
        return {t.user_attrs["kdsearch.trial_id"]: t for t in searcher.study.get_trials() if "kdsearch.trial_id" in t.user_attrs}

    assert [t.state.name for t in trained(again).values()] == ["COMPLETE", "COMPLETE", "RUNNING"]
    assert trained(again)["t2"].params == told["t2"]
    assert all(t.user_attrs.get("kdsearch.repeat") for t in again.study.get_trials() if t not in trained(again).values())
    again.on_trial_complete("t2", result={"val/acc": 0.7, "student/params": 10.0, "training_iteration": 2})
    assert trained(again)["t2"].values[0] == 0.7
    config = again.suggest("t3")  # the restored searcher goes on drawing, never settings already trained
    assert config not in told.values()


def test_a_define_by_run_space_draws_a_setting_only_when_its_condition_holds():
    """What comparing methods in one sweep needs: temperature only when method is kd."""
    from kdsearch.ray_trials.searcher import StudySearcher

    space = {
        "method": {"kind": "choice", "args": ["ce", "kd"]},
        "temperature": {"kind": "loguniform", "args": [1.0, 20.0], "when": {"param": "method", "in": ["kd"]}},
        "lr": {"kind": "loguniform", "args": [0.01, 0.2]},
    }
    searcher = StudySearcher(space, [("val/acc", "max")], sampler="tpe", seed=0, startup_trials=4, max_epochs=1)
    seen = []
    for i in range(12):
        config = searcher.suggest(f"t{i}")
        seen.append(config)
        score = 0.5 + (0.3 if config["method"] == "kd" else 0.0) + 0.01 * config.get("temperature", 0)
        searcher.on_trial_complete(f"t{i}", result={"val/acc": score, "training_iteration": 1})
    assert {c["method"] for c in seen} == {"ce", "kd"}
    assert all(("temperature" in c) == (c["method"] == "kd") for c in seen), seen
    trials = searcher.study.get_trials()
    assert all(("temperature" in t.params) == (t.params["method"] == "kd") for t in trials)
    grid = StudySearcher(
        {
            **space,
            "temperature": {**space["temperature"], "kind": "choice", "args": [2.0, 4.0]},
            "lr": {"kind": "choice", "args": [0.1]},
        },
        [("val/acc", "max")],
        sampler="grid",
    )
    configs = []
    while isinstance(config := grid.suggest(f"g{len(configs)}"), dict):
        configs.append(config)
    assert configs == [
        {"method": "ce", "lr": 0.1},
        {"method": "kd", "temperature": 2.0, "lr": 0.1},
        {"method": "kd", "temperature": 4.0, "lr": 0.1},
    ]  # a method's grid is crossed only with that method


def _toy_search(sampler, seed, *, waves):
    """A searcher on a 2-D toy objective (its optimum 1.0 at x=0.7, y=0.2), asked ``waves`` of
    trials at once, each wave told before the next; returns each wave's (x, y, regret)."""
    from kdsearch.ray_trials.searcher import StudySearcher

    space = {"x": {"kind": "uniform", "args": [0.0, 1.0]}, "y": {"kind": "uniform", "args": [0.0, 1.0]}}
    searcher = StudySearcher(space, [("val/acc", "max")], sampler=sampler, seed=seed, startup_trials=8, max_epochs=1)
    out, n = [], 0
    for size in waves:
        wave = [(f"t{n + i}", searcher.suggest(f"t{n + i}")) for i in range(size)]
        n += size
        for trial_id, c in wave:
            regret = (c["x"] - 0.7) ** 2 + (c["y"] - 0.2) ** 2
            searcher.on_trial_complete(trial_id, result={"val/acc": 1 - regret, "training_iteration": 1})
        out.append([(c["x"], c["y"], (c["x"] - 0.7) ** 2 + (c["y"] - 0.2) ** 2) for _, c in wave])
    return out


def test_sixteen_trials_asked_at_once_spread_out_under_the_constant_liar():
    """The constant liar: a trial asked while others run counts them as bad guesses, so 16 asked
    at once (after 12 told) spread over the square instead of piling onto TPE's current favourite.
    Mean distance of a wave's 16 points from their centroid, 6 seeds: about 0.31 with the liar,
    0.10 without it (measured over 30 seeds: means of 6 seeds 0.31-0.33 against 0.09-0.14)."""
    import statistics

    def spread(wave):
        cx, cy = statistics.mean(p[0] for p in wave), statistics.mean(p[1] for p in wave)
        return statistics.mean(((p[0] - cx) ** 2 + (p[1] - cy) ** 2) ** 0.5 for p in wave)

    waves = [_toy_search("tpe", seed, waves=[12, 16])[1] for seed in range(6)]
    assert all(len({(x, y) for x, y, _ in wave}) == 16 for wave in waves)
    spreads = [spread(wave) for wave in waves]
    assert statistics.mean(spreads) > 0.22, spreads


def test_tpe_asked_sixteen_at_once_still_models_the_objective_better_than_random_search():
    """After its 8 random startup trials TPE's suggestions, asked 16 at a time, land near the
    optimum: the median regret of the 48 modelled trials is about 0.06 against random search's
    0.15-0.27 on the same seeds (a plain random sampler in TPE's place fails this)."""
    import statistics

    def median_regret(sampler, seed):
        waves = _toy_search(sampler, seed, waves=[8, 16, 16, 16])
        return statistics.median(r for wave in waves[1:] for _, _, r in wave)

    tpe = [median_regret("tpe", seed) for seed in range(3)]
    random = [median_regret("random", seed) for seed in range(3)]
    assert statistics.mean(tpe) < 0.5 * statistics.mean(random), (tpe, random)


def test_a_warm_start_tells_trials_stopped_early_as_pruned(tmp_path):
    import optuna

    earlier = [
        TrialRecord("e0", {"alpha": 0.1}, [{"val/acc": 0.3}], "TERMINATED"),
        TrialRecord("e1", {"alpha": 0.9}, [{"val/acc": 0.5}, {"val/acc": 0.75}, {"val/acc": 0.7}], "TERMINATED"),
    ]
    manifest = {"name": "earlier", "space": {"alpha": {}}, "objectives": [["val/acc", "max"]]}
    assert warm_start(_alpha_spec(), ("new", tmp_path / "warm.db"), earlier, manifest) == 2
    study = optuna.load_study(study_name="new", storage=f"sqlite:///{tmp_path / 'warm.db'}")
    states = {t.params["alpha"]: (t.state, t.value, t.intermediate_values) for t in study.get_trials()}
    # scored by its best epoch, as everywhere
    assert states == {0.1: (optuna.trial.TrialState.PRUNED, None, {1: 0.3}), 0.9: (optuna.trial.TrialState.COMPLETE, 0.75, {})}


def test_a_reused_trial_actor_keeps_its_imports_out_of_the_collector_and_still_frees_each_trial(monkeypatch):
    """A full garbage collection between two trials of a reused actor walked the ~300,000
    objects of Ray, torch and kdsearch (80-150 ms a trial here): those are frozen at the actor's
    setup. The last trial's model must still be freed when the next one starts."""
    import gc
    import weakref

    from kdsearch.data import load_dataset
    from kdsearch.ray_trials import trainable as trainables

    class Context:
        def get_node_id(self):
            return "node"

    monkeypatch.setattr(trainables.ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(trainables.ray, "get_runtime_context", lambda: Context())
    spec = parse_sweep(
        {"fixed": {"method": "ce", "dataset": "digits", "epochs": 1}, "space": {"lr": {"uniform": [0.01, 0.1]}}},
        "ce.yaml",
    )
    data = load_dataset("digits")
    shared = dict(
        spec=spec, data_payload=trainables.payload(data), teacher_payload=None, threads=1, teacher_outputs=None,
        static_by_architecture=trainables.architecture_metrics(spec, data), gpu_share=0.0,
    )  # fmt: skip
    trainable = trainables.EpochTrainable.__new__(trainables.EpochTrainable)
    try:
        gc.unfreeze()
        gc.collect()
        objects_before = len(gc.get_objects())
        trainable.setup({"lr": 0.05}, **shared)
        assert gc.get_freeze_count() >= 0.98 * objects_before  # all but what was garbage by then
        first = weakref.ref(trainable.run.student)
        result = trainable.step()
        assert result["trial/score"] == result["val/acc"] == trainable.last_metrics["val/acc"]
        trainable.reset_config({"lr": 0.02})
        assert first() is None, "the first trial's student outlived the reset"
        assert trainable.run.student is not None and trainable.cfg.lr == 0.02 and trainable.last_metrics == {}
    finally:
        trainable.cleanup()
        gc.unfreeze()


def test_writing_the_study_prints_nothing(tmp_path):
    """A resumed sweep restores its searcher from Tune's state, without the setup that quiets
    Optuna: saving the study printed Optuna's "A new study created in RDB" among the results."""
    import subprocess
    import sys

    script = f"""
import optuna
from kdsearch.search.study import write_study
trial = optuna.trial.create_trial(params={{}}, distributions={{}}, value=0.5)
print("saving", flush=True)
write_study("r", ["maximize"], ["val/acc"], [trial], __import__("pathlib").Path({str(tmp_path / "optuna.db")!r}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "A new study" not in proc.stderr, proc.stderr
    assert (tmp_path / "optuna.db").is_file()


def test_tunes_idle_wait_is_raised_only_on_the_ray_it_was_written_for(monkeypatch, caplog):
    """The wait goes through a private Ray module (ray_internals): on another Ray version, or a Ray 2.60
    that has moved it, Tune's own loop runs unchanged and one log line says so."""
    import logging
    import sys

    from ray.air.execution._internal.actor_manager import RayActorManager

    from kdsearch.ray_trials import ray_internals

    original = RayActorManager.next
    with ray_internals.calm_tune_loop() as calmed:
        assert calmed and RayActorManager.next is not original
    assert RayActorManager.next is original
    with caplog.at_level(logging.INFO, logger="kdsearch"):
        with ray_internals.calm_tune_loop(version="2.61.0") as calmed:
            assert not calmed and RayActorManager.next is original
    assert "Ray 2.61.0 is not 2.60.x" in caplog.text
    monkeypatch.setitem(sys.modules, "ray.air.execution._internal.actor_manager", None)  # the internal is gone
    with caplog.at_level(logging.INFO, logger="kdsearch"):
        with ray_internals.calm_tune_loop() as calmed:
            assert not calmed
    assert "has no ray.air.execution._internal.actor_manager.RayActorManager" in caplog.text


def test_a_restarted_trial_keeps_each_epoch_once_from_its_last_run_and_a_resumed_sweep_reads_storage(tmp_path, monkeypatch):
    """Tune restarts a trial whose worker died from its checkpoint, and its result log copies the
    trial's result.json back from storage, a copy only as new as Tune's last save: the epochs
    since were lost (a 2-node cluster lost epoch 49 of 80). kdsearch's log keeps what it wrote,
    and each epoch once: the restarted run's epochs replace those its abandoned run logged past
    the checkpoint it restarts from. On a Ray whose private name moved, Ray's copy stands."""
    import json

    import pyarrow.fs

    from kdsearch.ray_trials import ray_internals

    class Trial:  # what a result log reads of one of Tune's trials
        def __init__(self, local):
            self.local_path, self.config, self.checkpoint = str(local), {"lr": 0.1}, object()
            local.mkdir(parents=True)  # Tune makes it when it creates the trial
            self.storage = type(
                "Storage",
                (),
                {"trial_fs_path": str(tmp_path / "storage" / "t"), "storage_filesystem": pyarrow.fs.LocalFileSystem()},
            )

        def init_local_path(self):
            Path(self.local_path).mkdir(parents=True, exist_ok=True)

    def lines(trial):
        rows = [json.loads(line) for line in Path(trial.local_path, "result.json").read_text().splitlines()]
        return [(r["epoch"], r["run"]) for r in rows]

    (tmp_path / "storage" / "t").mkdir(parents=True)
    (tmp_path / "storage" / "t" / "result.json").write_text("".join(json.dumps({"epoch": e, "run": "a"}) + "\n" for e in (1, 2)))
    log, trial = ray_internals.ResultLog(), Trial(tmp_path / "driver" / "t")
    trial.checkpoint = None  # a new trial
    log.log_trial_start(trial)
    for epoch in (1, 2, 3, 4):
        log.log_trial_result(epoch, trial, {"epoch": epoch, "run": "a"})
    trial.checkpoint = object()
    log.log_trial_start(trial)  # its worker died: Tune starts it again from its epoch-4 checkpoint
    log.log_trial_result(5, trial, {"epoch": 5, "run": "b"})
    assert lines(trial) == [(1, "a"), (2, "a"), (3, "a"), (4, "a"), (5, "b")]
    log.log_trial_start(trial)  # died again, restarted from its epoch-3 checkpoint: epochs 4 and 5 run again
    for epoch in (4, 5, 6):
        log.log_trial_result(epoch, trial, {"epoch": epoch, "run": "c"})
    assert lines(trial) == [(1, "a"), (2, "a"), (3, "a"), (4, "c"), (5, "c"), (6, "c")]  # each epoch once, the last run's
    resumed = Trial(tmp_path / "driver2" / "t")  # `--resume`: a new driver, with no copy of its own
    ray_internals.ResultLog().log_trial_start(resumed)
    assert lines(resumed) == [(1, "a"), (2, "a")]
    ray_internals.ResultLog().log_trial_result(2, resumed, {"epoch": 2, "run": "d"})  # resumed from its epoch-1 checkpoint
    assert lines(resumed) == [(1, "a"), (2, "d")]
    # a Ray whose private name differs: the copy from storage, as Ray makes it (and one log line)
    moved, elsewhere = ray_internals.ResultLog(version="2.61.0"), Trial(tmp_path / "driver3" / "t")
    Path(elsewhere.local_path, "result.json").write_text(json.dumps({"epoch": 1, "run": "x"}) + "\n")
    assert not moved.on_tested_ray and log.on_tested_ray
    moved.log_trial_start(elsewhere)
    assert lines(elsewhere) == [(1, "a"), (2, "a")]
    from ray.tune.logger.logger import LoggerCallback

    monkeypatch.delattr(LoggerCallback, "_restore_from_remote")  # a Ray 2.60 that moved the name
    assert not ray_internals.ResultLog().on_tested_ray


def test_tune_builds_no_dataframe_of_results_and_kdsearch_reads_each_trials_file_itself(tmp_path):
    """Tune's ExperimentAnalysis (at the end of fit, and on a restore) reads every trial's results
    into a DataFrame: 34 KB a trial, 67 MB at 2,000 trials. Skipped within the context, on the Ray
    it was written for; kdsearch reads result.json itself, a cut-off last line and the config left out."""
    import json

    import pyarrow.fs
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    from kdsearch.ray_trials import ray_internals
    from kdsearch.ray_trials.runner import trial_history

    original = ExperimentAnalysis._fetch_trial_dataframes
    with ray_internals.without_result_frames() as skipped:
        assert skipped and ExperimentAnalysis._fetch_trial_dataframes(None) == {}
    assert ExperimentAnalysis._fetch_trial_dataframes is original
    with ray_internals.without_result_frames(version="2.61.0") as skipped:
        assert not skipped and ExperimentAnalysis._fetch_trial_dataframes is original

    rows = [{"epoch": 1, "val/acc": 0.5, "config": {"lr": 0.1}}, {"epoch": 2, "val/acc": float("nan"), "config": {"lr": 0.1}}]
    (tmp_path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 3, "val/')
    result = type("Result", (), {"path": str(tmp_path), "filesystem": pyarrow.fs.LocalFileSystem()})
    history = trial_history(result)
    assert [h["epoch"] for h in history] == [1, 2] and all("config" not in h for h in history)
    assert history[0]["val/acc"] == 0.5 and history[1]["val/acc"] != history[1]["val/acc"]  # NaN stays NaN
    assert trial_history(type("Result", (), {"path": str(tmp_path / "none"), "filesystem": pyarrow.fs.LocalFileSystem()})) == []


def test_a_trial_drawn_after_the_last_saved_state_is_still_told_when_it_ends(tmp_path):
    """A sweep killed (not stopped) loses what its searcher did since Tune last saved it; Tune
    still resumes the trial it had started. Its settings come with its results: the study gets it."""
    import pickle

    spec = _alpha_spec(num_samples=3)
    searcher = make_searcher(spec, "k", tmp_path / "optuna.db", max_epochs=2)
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", result={"val/acc": 0.5, "training_iteration": 2})
    searcher.save(str(tmp_path / "state.pkl"))
    lost = searcher.suggest("t1")  # drawn after the save, then the driver is killed
    restored = pickle.loads(pickle.dumps(searcher))
    restored.restore(str(tmp_path / "state.pkl"))
    restored.on_trial_result("t1", {"val/acc": 0.6, "training_iteration": 1, "config": dict(lost)})
    restored.on_trial_complete("t1", result={"val/acc": 0.7, "training_iteration": 2, "config": dict(lost)})
    trials = {t.user_attrs.get("kdsearch.trial_id"): t for t in restored.study.get_trials()}
    assert trials["t1"].params == lost and trials["t1"].value == 0.7 and trials["t1"].state.name == "COMPLETE"
    assert restored.suggest("t2") != lost


def test_a_restored_searcher_tells_the_trial_it_knew_was_running_when_it_ends(tmp_path):
    import pickle

    spec = _alpha_spec(num_samples=3)
    searcher = make_searcher(spec, "r", tmp_path / "optuna.db", max_epochs=2)
    running = searcher.suggest("t0")
    searcher.on_trial_result("t0", {"val/acc": 0.6, "training_iteration": 1, "config": dict(running)})
    searcher.save(str(tmp_path / "state.pkl"))
    restored = pickle.loads(pickle.dumps(searcher))
    restored.restore(str(tmp_path / "state.pkl"))  # Tune resumes t0 under its id; no ask in between
    restored.on_trial_complete("t0", result={"val/acc": 0.7, "training_iteration": 2, "config": dict(running)})
    trials = restored.study.get_trials()
    assert [(t.state.name, t.user_attrs["kdsearch.trial_id"], t.value) for t in trials] == [("COMPLETE", "t0", 0.7)]


def test_trials_receive_no_test_images():
    """Trials select on validation; the driver alone reads the test split, once, to report."""
    import torch

    from kdsearch.data import load_dataset
    from kdsearch.ray_trials.trainable import payload, unpack

    data = load_dataset("digits")
    sent = payload(data)
    assert sent["test_x"].shape == (0, 1, 8, 8) and sent["test_y"].shape == (0,)
    got = unpack(sent)
    assert len(got.test_x) == 0 and torch.equal(got.val_x, data.val_x) and torch.equal(got.train_x, data.train_x)
    assert got.split == data.split and got.mean == data.mean


def test_a_trials_reported_score_is_its_best_epoch_so_far():
    """trial/score, reported every epoch, is the trial's best epoch so far: the score the progress
    table shows and the sweep's record ranks by (ASHA compares the metric itself at its rungs,
    and every checkpoint is kept: none is chosen by score)."""
    from kdsearch.search.record import score_so_far

    scores, score = [], None
    for acc in (0.5, 0.9, float("nan"), 0.7, 0.95):
        score = score_so_far(score, {"val/acc": acc}, Objective("val/acc", "max"))
        scores.append(score)
    assert scores == [0.5, 0.9, 0.9, 0.9, 0.95]
    assert score_so_far(0.3, {"val/loss": 0.4}, Objective("val/loss", "min")) == 0.3
    assert score_so_far(0.3, {"val/loss": 0.2}, Objective("val/loss", "min")) == 0.2
    assert score_so_far(None, {}, Objective("val/acc", "max")) is None


def test_a_trial_writes_its_student_file_once_at_its_end_and_a_checkpoint_before_carries_the_best_student(tmp_path, monkeypatch):
    """Issue 30: a checkpoint before a trial's end (an ASHA rung) is the training state alone, the
    best student so far inside it (its weights only when not the state's own); the student file is
    written at the end, or from the state when a stopped trial's checkpoint is read; a resumed trial
    carries the best student and score over."""
    import torch

    from kdsearch.data import load_dataset
    from kdsearch.models.checkpoint import load_model, trial_student
    from kdsearch.ray_trials import trainable as trainables

    class Context:
        def get_node_id(self):
            return "node"

    monkeypatch.setattr(trainables.ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(trainables.ray, "get_runtime_context", lambda: Context())
    accuracies = iter([0.5, 0.9, 0.7, 0.8])  # the best epoch is the second
    real = trainables.run_epoch

    def scripted(run, data, epoch, best_val):
        metrics, _ = real(run, data, epoch, best_val)
        return {**metrics, "val/acc": next(accuracies)}, best_val

    monkeypatch.setattr(trainables, "run_epoch", scripted)
    spec = parse_sweep(
        {"fixed": {"method": "ce", "dataset": "digits", "epochs": 4}, "space": {"lr": {"uniform": [0.01, 0.1]}}}, "ce.yaml"
    )
    data = load_dataset("digits")
    shared = dict(
        spec=spec, data_payload=trainables.payload(data), teacher_payload=None, threads=1, teacher_outputs=None,
        static_by_architecture=trainables.architecture_metrics(spec, data), gpu_share=0.0,
    )  # fmt: skip

    def trainable():
        t = trainables.EpochTrainable.__new__(trainables.EpochTrainable)
        t.setup({"lr": 0.05}, **shared)
        return t

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    first = trainable()
    folders = [tmp_path / f"checkpoint_{i}" for i in range(4)]
    for folder in folders[:3]:
        first.step()
        folder.mkdir()
        first.save_checkpoint(str(folder))
    best_weights = {k: v.clone() for k, v in first.best_student[0].items()}
    assert not any((f / "student.pt").exists() for f in folders[:3])  # before the end: the state alone
    states = [torch.load(f / "state.pt", weights_only=True) for f in folders[:3]]
    assert [s["best"]["student"] is None for s in states] == [True, True, False]  # epoch 3's best is epoch 2's student
    _, at_two = load_model(trial_student(folders[1]))
    assert at_two["metrics"]["val/acc"] == 0.9 and same(at_two["state_dict"], states[1]["student"])
    _, at_three = load_model(trial_student(folders[2]))  # a trial ASHA stopped here: written when read
    assert at_three["metrics"]["val/acc"] == 0.9 and same(at_three["state_dict"], best_weights)
    assert at_three["score"] == 0.9 and at_three["model"]["arch"] == "resnet8" and at_three["config"]["lr"] == 0.05
    first.cleanup()

    resumed = trainable()  # a retry, or --resume: from the rung's checkpoint
    resumed.load_checkpoint(str(folders[2]))
    assert resumed.epoch == 3 and resumed.score == 0.9 and same(resumed.best_student[0], best_weights)
    assert resumed.step()["done"]  # epoch 4: 0.8, the best stays epoch 2's
    folders[3].mkdir()
    resumed.save_checkpoint(str(folders[3]))
    _, last = load_model(folders[3] / "student.pt")  # the end: written by the trial
    assert last["metrics"]["val/acc"] == 0.9 and same(last["state_dict"], best_weights)
    resumed.cleanup()

    # Restored from its end checkpoint (its worker died after the last save, or a resume whose
    # experiment state had not recorded the end): it trains no fifth epoch (the scripted epochs are
    # spent: another would raise), it reports its last result again, marked, and ends.
    ended = trainable()
    ended.load_checkpoint(str(folders[3]))
    again = ended.step()
    assert again["done"] and again[trainables.REPLAYED] == 1.0 and again["epoch"] == 4 and again["val/acc"] == 0.8
    assert again["trial/score"] == 0.9
    ended.cleanup()


def test_a_replayed_result_is_not_written_to_the_trials_result_file_or_mlflow_again(monkeypatch):
    from ray.tune.logger import JsonLoggerCallback

    from kdsearch.ray_trials import ray_internals, runner
    from kdsearch.ray_trials.trainable import REPLAYED

    written, tracked = [], []
    monkeypatch.setattr(JsonLoggerCallback, "log_trial_result", lambda self, i, trial, result: written.append(result))

    class Tracker:
        def trial_result(self, trial_id, params, result):
            tracked.append(result)

    class Trial:
        trial_id, config, local_path = "t", {"lr": 0.1}, "/nonexistent-trial-folder"

    for result in ({"epoch": 4}, {"epoch": 4, REPLAYED: 1.0}):
        ray_internals.ResultLog().log_trial_result(1, Trial(), result)
        runner.ForwardResults(Tracker()).on_trial_result(1, [], Trial(), result)
    assert written == tracked == [{"epoch": 4}]


def test_a_history_read_back_holds_each_epoch_once_from_the_last_run_that_wrote_it():
    """However result.json was written (another Ray, a copy from storage), what kdsearch reads of it
    (the score, the report, MLflow's sync) holds each epoch once, from the run that wrote it last."""
    import json

    from kdsearch.search.record import parse_history

    lines = [{"epoch": e, "run": "a", "config": {"lr": 0.1}} for e in (1, 2, 3, 4)] + [
        {"epoch": e, "run": "b"} for e in (3, 4, 5)
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"epoch": 6, "ru'  # cut short by a kill
    assert [(r["epoch"], r["run"]) for r in parse_history(text)] == [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "b")]
    assert all("config" not in r for r in parse_history(text))
