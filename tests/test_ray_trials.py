"""The searcher kdsearch gives Ray Tune, driven directly (no Ray cluster needed)."""

import pytest

from kdsearch.errors import UserError
from kdsearch.ray_trials import _searcher, tune_space, warm_start
from kdsearch.search_space import parse_sweep
from kdsearch.sweep_folder import TrialRecord


def _drive(spec, trials):
    searcher = _searcher(spec)
    searcher.set_search_properties(None, None, tune_space(spec))
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
    from kdsearch.ray_trials import architecture_metrics

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
    searcher = _searcher(spec, study)
    searcher.set_search_properties(None, None, tune_space(spec))
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


def test_as_many_trials_start_at_once_as_the_cluster_runs(monkeypatch, tmp_path):
    """Ray Tune starts one trial at a time under a searcher unless it is told how many may be
    starting at once: the sweep tells it what the cluster fits (4 trials at 0.25 GPU on one GPU)."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search import SearchGenerator

    from kdsearch import ray_trials

    monkeypatch.setattr(ray_trials.ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    assert ray_trials.trials_at_once(2, 0.25) == 4
    assert ray_trials.trials_at_once(1, 0) == 16
    assert ray_trials.trials_at_once(2, 0.3) == 3
    assert ray_trials.trials_at_once(32, 0) == 1

    captured = {}

    class Captured(Exception):
        pass

    class FakeTuner:
        def __init__(self, trainable, *, param_space, tune_config, run_config):
            captured["config"] = tune_config
            raise Captured

    monkeypatch.setattr(ray_trials.tune, "Tuner", FakeTuner)
    monkeypatch.setattr(ray_trials.tune, "with_parameters", lambda trainable, **kw: trainable)
    monkeypatch.setattr(ray_trials.tune, "with_resources", lambda trainable, resources: trainable)
    monkeypatch.setattr(ray_trials, "_payload", lambda data: None)
    monkeypatch.setattr(ray_trials, "architecture_metrics", lambda spec, data: {})
    monkeypatch.setattr(ray_trials, "check_storage", lambda storage, shared: None)
    spec = parse_sweep(
        {
            "fixed": {"method": "kd", "dataset": "digits", "epochs": 2},
            "space": {"alpha": {"uniform": [0, 1]}},
            "search": {"num_samples": 8, "seed": 0},
        },
        "at_once.yaml",
    )
    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    with pytest.raises(Captured):
        ray_trials.run_trials(
            spec, None, None, storage=str(tmp_path), name="s", resume=False, cpus_per_trial=2, gpus_per_trial=0.25
        )
    assert captured["config"].max_concurrent_trials is None  # not a cap: an autoscaling cluster still grows
    # what Tune then does under a searcher: four trials pending (starting) at once, not one
    searcher = ray_trials._searcher(spec, None)
    assert _get_max_pending_trials(SearchGenerator(searcher)) == 4
    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG")
    assert _get_max_pending_trials(SearchGenerator(searcher)) == 1  # Tune's own choice


def test_the_study_stays_in_memory_while_trials_run_and_is_written_when_they_end(tmp_path):
    """No SQLite write per trial in Tune's loop; optuna-dashboard still gets the whole study."""
    import optuna

    from kdsearch.ray_trials import _optuna_study, save_study

    spec = parse_sweep(
        {"fixed": {"method": "kd", "dataset": "digits"}, "space": {"alpha": {"uniform": [0, 1]}}, "search": {"seed": 0}},
        "mem.yaml",
    )
    db = tmp_path / "optuna.db"
    searcher = _searcher(spec, ("mem", db))
    searcher.set_search_properties(None, None, tune_space(spec))
    for i in range(3):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", result={"val/acc": config["alpha"], "training_iteration": 2})
    searcher.suggest("t3")  # still running when the sweep ends
    assert not db.exists()
    save_study(_optuna_study(searcher), db)
    study = optuna.load_study(study_name="mem", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert not list(tmp_path.glob("*.partial"))


def test_a_trial_asha_stopped_is_pruned_for_tpe_not_compared_with_finished_ones():
    """Told as complete, a trial ASHA stopped after 1 of 5 epochs competed with trials that
    trained all 5: under a one-cycle schedule the learning rates that end best look worst after
    1 epoch, and TPE learned the rung's noise. It is told as pruned at the epoch it reached."""
    import optuna

    spec = _alpha_spec(num_samples=4)
    searcher = _searcher(spec, max_epochs=5)
    searcher.set_search_properties(None, None, tune_space(spec))
    for i, (epochs, acc) in enumerate([(1, 0.2), (5, 0.8), (3, 0.6), (5, 0.7)]):
        searcher.suggest(f"t{i}")
        for e in range(1, epochs):  # as Tune does: the result that ends a trial goes to on_trial_complete only
            searcher.on_trial_result(f"t{i}", {"val/acc": acc - 0.1, "training_iteration": e})
        searcher.on_trial_complete(f"t{i}", result={"val/acc": acc, "training_iteration": epochs})
    trials = searcher._ot_study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE] * 2
    # ranked at the epoch each was stopped, on the accuracy ASHA judged there
    assert trials[0].intermediate_values == {1: 0.2} and trials[2].intermediate_values == {1: 0.5, 2: 0.5, 3: 0.6}
    assert [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE] == [0.8, 0.7]


def test_a_warm_start_tells_trials_stopped_early_as_pruned(tmp_path):
    import optuna

    earlier = [
        TrialRecord("e0", {"alpha": 0.1}, [{"val/acc": 0.3}], "TERMINATED"),
        TrialRecord("e1", {"alpha": 0.9}, [{"val/acc": 0.5}, {"val/acc": 0.6}, {"val/acc": 0.7}], "TERMINATED"),
    ]
    manifest = {"name": "earlier", "space": {"alpha": {}}, "objectives": [["val/acc", "max"]]}
    assert warm_start(_alpha_spec(), ("new", tmp_path / "warm.db"), earlier, manifest) == 2
    study = optuna.load_study(study_name="new", storage=f"sqlite:///{tmp_path / 'warm.db'}")
    states = {t.params["alpha"]: (t.state, t.value, t.intermediate_values) for t in study.get_trials()}
    assert states == {0.1: (optuna.trial.TrialState.PRUNED, None, {1: 0.3}), 0.9: (optuna.trial.TrialState.COMPLETE, 0.7, {})}


def test_a_reused_trial_actor_keeps_its_imports_out_of_the_collector_and_still_frees_each_trial(monkeypatch):
    """A full garbage collection between two trials of a reused actor walked the ~300,000
    objects of Ray, torch and kdsearch (80-150 ms a trial here): those are frozen at the actor's
    setup. The last trial's model must still be freed when the next one starts."""
    import gc
    import weakref

    from kdsearch import ray_trials
    from kdsearch.data import load_dataset

    class Context:
        def get_node_id(self):
            return "node"

    monkeypatch.setattr(ray_trials.ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(ray_trials.ray, "get_runtime_context", lambda: Context())
    spec = parse_sweep(
        {"fixed": {"method": "ce", "dataset": "digits", "epochs": 1}, "space": {"lr": {"uniform": [0.01, 0.1]}}},
        "ce.yaml",
    )
    data = load_dataset("digits")
    shared = dict(
        spec=spec, data_payload=ray_trials._payload(data), teacher_payload=None, threads=1, teacher_outputs=None,
        static_by_architecture=ray_trials.architecture_metrics(spec, data), gpu_share=0.0,
    )  # fmt: skip
    trainable = ray_trials.EpochTrainable.__new__(ray_trials.EpochTrainable)
    try:
        gc.unfreeze()
        gc.collect()
        objects_before = len(gc.get_objects())
        trainable.setup({"lr": 0.05}, **shared)
        assert gc.get_freeze_count() >= 0.98 * objects_before  # all but what was garbage by then
        first = weakref.ref(trainable.run.student)
        trainable.reset_config({"lr": 0.02})
        assert first() is None, "the first trial's student outlived the reset"
        assert trainable.run.student is not None and trainable.cfg.lr == 0.02
    finally:
        trainable.cleanup()
        gc.unfreeze()


def test_writing_the_study_after_a_resume_prints_nothing(tmp_path):
    """A resumed sweep restores its searcher from Tune's state, without the setup that quiets
    Optuna: saving the study printed Optuna's "A new study created in RDB" among the results."""
    import subprocess
    import sys

    script = f"""
import optuna
from kdsearch.ray_trials import save_study
study = optuna.create_study(study_name="r", direction="maximize")  # as restored: Optuna's logging untouched
study.add_trial(optuna.trial.create_trial(params={{}}, distributions={{}}, value=0.5))
print("saving", flush=True)
save_study(study, __import__("pathlib").Path({str(tmp_path / "optuna.db")!r}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "A new study created in memory" in proc.stderr  # Optuna does talk at this verbosity
    assert "in RDB" not in proc.stderr, proc.stderr
    assert (tmp_path / "optuna.db").is_file()


def test_a_ray_without_tunes_actor_manager_where_kdsearch_expects_it_still_runs_its_loop(monkeypatch):
    """The wait is raised through a private Ray module: a later Ray 2.x that moves it keeps Tune's own loop."""
    import sys

    from kdsearch.ray_trials import _calm_tune_loop

    monkeypatch.setitem(sys.modules, "ray.air.execution._internal.actor_manager", None)  # import fails
    ran = []
    with _calm_tune_loop():
        ran.append(True)
    assert ran == [True]
    monkeypatch.undo()
    from ray.air.execution._internal.actor_manager import RayActorManager

    original = RayActorManager.next
    with _calm_tune_loop():
        assert RayActorManager.next is not original
    assert RayActorManager.next is original
