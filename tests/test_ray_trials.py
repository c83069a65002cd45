"""The searcher kdsearch gives Ray Tune, driven directly (no Ray cluster needed)."""

from kdsearch.ray_trials import _searcher, tune_space
from kdsearch.search_space import parse_sweep


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
