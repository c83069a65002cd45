"""Search-space files: every shipped one parses, and each mistake is one line naming file and key."""

from pathlib import Path

import pytest

from kdsearch.errors import UserError
from kdsearch.search.space import load_sweep, parse_sweep

SPACES = sorted((Path(__file__).parent.parent / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_shipped_space_parses_and_builds_a_trial_config(path):
    from kdsearch.methods import METHODS

    spec = load_sweep(path)
    assert spec.space and all(spec.example_config(m).method in METHODS for m in spec.methods)
    for dist in spec.space.values():
        if dist["kind"] in ("uniform", "loguniform", "int"):
            assert dist["args"][0] < dist["args"][1]
            assert all(isinstance(a, (int, float)) for a in dist["args"])  # 1e-3 read as a number


def test_shipped_spaces_cover_every_dataset_and_method():
    names = {p.stem for p in SPACES}
    for dataset in ("cifar10", "cifar100", "fashion_mnist", "celeba"):
        for method in ("kd", "at", "dml"):
            assert f"{dataset}-{method}" in names
    assert "quickstart" in names


def test_flat_keys_route_to_config_or_method_and_lists_reassemble():
    spec = parse_sweep(
        {
            "fixed": {"method": "at", "dataset": "digits", "epochs": 2, "p": 2.0},
            "space": {
                "beta": {"loguniform": [1e1, 1e4]},
                "weights": [{"uniform": [0, 2]}, 1.0, {"uniform": [0, 2]}],
                "lr": {"loguniform": [1e-3, 1e-1]},
            },
        },
        "t.yaml",
    )
    assert set(spec.space) == {"beta", "weights.0", "weights.2", "lr"}
    cfg = spec.trial_config({"beta": 50.0, "weights.0": 0.5, "weights.2": 1.5, "lr": 0.01})
    defaults = {"alpha": 0.0, "temperature": 4.0, "resize": "pool"}  # the method's own, filled in
    assert cfg.lr == 0.01 and cfg.method_args == {"p": 2.0, "beta": 50.0, "weights": [0.5, 1.0, 1.5], **defaults}


def test_two_objectives_switch_to_nsga2():
    spec = parse_sweep(
        {
            "fixed": {"method": "kd"},
            "space": {"alpha": {"uniform": [0, 1]}},
            "search": {"objectives": [{"val/acc": "max"}, {"latency/cpu_ms": "min"}]},
        },
        "m.yaml",
    )
    assert spec.search.sampler == "nsga2" and spec.search.metric == "val/acc"


def test_a_grid_runs_every_combination_once():
    spec = parse_sweep(
        {
            "fixed": {"method": "kd"},
            "space": {"alpha": {"choice": [0.1, 0.5, 0.9]}, "temperature": {"choice": [2, 8]}},
            "search": {"sampler": "grid"},
        },
        "g.yaml",
    )
    assert spec.search.num_samples == 6


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"space": {"alpha": {"uniform": [1, 0]}}},
            "space.alpha: uniform bounds must be [low, high] with low < high, got [1, 0]",
        ),
        ({"space": {"temperature": {"loguniform": [0, 20]}}}, "space.temperature: loguniform bounds must be > 0"),
        ({"space": {"temperature": {"normal": [0, 1]}}}, "space.temperature: a distribution is one of"),
        ({"space": {"alpha": {"uniform": [0]}}}, "space.alpha: uniform needs two numbers"),
        ({"space": {"alpha": {"uniform": ["a", 1]}}}, "space.alpha: uniform needs two numbers"),
        (
            {"space": {"num_peers": {"int": [2, 4]}}},
            "unknown key 'num_peers'; not a training setting nor a setting of method 'kd'",
        ),
        ({"space": {"lrr": {"uniform": [0, 1]}}}, "space: unknown key 'lrr'"),
        ({"space": {"dataset": {"choice": ["digits"]}}}, "space.dataset: dataset cannot vary within a sweep"),
        ({"space": {"alpha": 0.5}}, "space.alpha: expected a distribution"),
        (
            {"fixed": {"method": "fitnets"}},
            "fixed.method: unknown method 'fitnets': choose one of at, ce, crd, dkd, dml, fitnet, kd, pkt, reviewkd, rkd, sp, or name your own Method subclass as module:Class",
        ),
        ({"space": {"method": {"choice": ["kd", "fitnets"]}}}, "space.method: unknown method 'fitnets'"),
        ({"space": {"method": {"uniform": [0, 1]}}}, "space.method: methods are compared as a choice"),
        ({"fixed": {"method": "kd"}, "space": {"method": {"choice": ["kd"]}}}, "method is both fixed and searched"),
        (
            {"space": {"method": {"choice": ["kd", "at"]}, "alpha": {"uniform": [0, 1]}}},
            "space: unknown key 'alpha'; the method is searched, so a method's settings go under its name, e.g. kd: {alpha: ...}",
        ),
        (
            {"space": {"method": {"choice": ["kd", "at"]}, "kd": {"beta": {"uniform": [0, 1]}}}},
            "space.kd: method 'kd' has no setting 'beta': its settings are temperature, alpha",
        ),
        (
            {"fixed": {"method": "kd"}, "space": {"alpha": {"schedule": "linear", "start": {"uniform": [0.5, 1.5]}, "end": 0.0}}},
            "its schedule leaves the valid range",
        ),
        (
            {"fixed": {"method": "kd"}, "space": {"alpha": {"schedule": "wavy", "start": {"uniform": [0.5, 1.0]}}}},
            "unknown schedule 'wavy'",
        ),
        ({"fixed": {"dataset": "imagenet"}}, "unknown dataset 'imagenet'"),
        ({"fixed": {"student": "vgg"}}, "student: unknown architecture 'vgg'"),
        ({"fixed": {"epochs": "ten"}}, "epochs must be an integer"),
        ({"fixed": {"alpha": 3}}, "alpha must be in [0, 1]"),
        ({"searc": {}}, "unknown key 'searc'; valid top-level keys are name, fixed, space, search"),
        ({"search": {"sampler": "cmaes"}}, "search.sampler 'cmaes' is unknown; choose one of tpe, random, nsga2"),
        ({"search": {"num_samples": 0}}, "search.num_samples must be a positive integer"),
        ({"search": {"metric": "test/acc"}}, "unknown metric 'test/acc'"),
        ({"search": {"budget": 3}}, "unknown key 'search.budget'"),
        (
            {"space": {"alpha": {"uniform": [0, 1]}}, "search": {"sampler": "grid"}},
            "space.alpha: search.sampler grid needs every entry to be a choice list",
        ),
        (
            {"space": {"alpha": {"choice": [0.1, 0.9]}}, "search": {"sampler": "grid", "num_samples": 3}},
            "search.num_samples is 3 but the grid has 2",
        ),
        ({"search": {"sampler": "grid"}}, "search.sampler grid needs a space of choice lists"),
        (
            {"search": {"metric": "val/best_acc"}},
            "val/best_acc never decreases, so it cannot tell which epoch's checkpoint is best; use metric: val/acc",
        ),
        ({"space": {"train_subset": {"choice": [500, 1000]}}}, "space.train_subset: train_subset cannot vary within a sweep"),
        ({"name": "../../escape"}, "sweep name '../../escape' must be letters, digits"),
        ({"name": "a/b"}, "sweep name 'a/b' must be letters"),
    ],
)
def test_mistakes_are_one_line_errors_naming_file_and_key(raw, message):
    with pytest.raises(UserError) as err:
        parse_sweep(raw, "space.yaml")
    text = str(err.value)
    assert text.startswith("space.yaml") and message in text and "\n" not in text


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("fixed: {method: kd, weight_decay: 5e-4}\nspace:\n  lr: {loguniform: [1e-3, 1e-1]}\n")
    spec = load_sweep(path)
    assert spec.space["lr"]["args"] == [1e-3, 1e-1] and spec.example_config().weight_decay == 5e-4
    assert spec.name == "s"  # the file name when the file has none


def test_the_teacher_is_trained_with_fixed_settings_not_sampled_ones():
    spec = parse_sweep({"fixed": {"method": "kd", "weight_decay": 1e-4}, "space": {"lr": {"loguniform": [1e-3, 1e-1]}}}, "t.yaml")
    assert spec.example_config().lr == 1e-3  # a trial's draw
    assert spec.fixed_config().lr == 0.05 and spec.fixed_config().weight_decay == 1e-4  # digits' default lr, the fixed decay


def test_fixed_settings_of_a_space_with_drawn_list_items():
    # The teacher is trained with the fixed settings alone; AT's per-stage weights, drawn per
    # trial, are then left to the method's default instead of failing on the undrawn items.
    spec = parse_sweep(
        {"fixed": {"method": "at", "dataset": "digits"}, "space": {"weights": [{"uniform": [0, 2]}, 1.0, {"uniform": [0, 2]}]}},
        "w.yaml",
    )
    assert spec.fixed_config().method_args["weights"] is None  # AT's default: one weight per stage
    assert spec.trial_config({"weights.0": 0.5, "weights.2": 1.5}).method_args["weights"] == [0.5, 1.0, 1.5]


def test_asha_judges_a_trial_late_in_its_schedule_unless_told_otherwise():
    """Under the one-cycle schedule a trial's accuracy after 20-40% of its epochs ranks trials on
    noise (benchmarks/results/search-efficiency/rungs.csv): ASHA's first rung is at 80% of the
    epochs by default, and so it is in every shipped space that stops trials early."""
    from kdsearch.ray_trials.runner import scheduler as _scheduler

    def rung(search, epochs):
        spec = parse_sweep(
            {"fixed": {"method": "kd", "dataset": "digits", "epochs": epochs}, "space": {}, "search": search}, "s.yaml"
        )
        return min(milestone for milestone, _ in _scheduler(spec, epochs)._brackets[0]._rungs)

    assert rung({}, 5) == 4 and rung({}, 10) == 8 and rung({}, 30) == 24 and rung({}, 1) == 1
    assert rung({"grace_period": 2}, 5) == 2 and rung({"grace_period": 9}, 5) == 5  # the user's, within the epochs
    for path in SPACES:
        spec = load_sweep(path)
        epochs = spec.example_config().epochs
        if spec.search.scheduler == "asha" and path.stem != "quickstart":
            assert spec.search.first_rung(epochs) >= 0.8 * epochs, path.stem
            assert spec.search.startup_trials() == 4, path.stem  # as measured in search_efficiency.py


def test_a_sweep_over_methods_draws_each_methods_settings_only_with_it():
    spec = parse_sweep(
        {
            "fixed": {"dataset": "digits", "kd": {"temperature": 2.0}},
            "space": {
                "method": {"choice": ["ce", "kd", "dkd"]},
                "kd": {"alpha": {"uniform": [0, 1]}},
                "dkd": {"beta": {"uniform": [1, 10]}},
                "lr": {"loguniform": [1e-2, 2e-1]},
            },
        },
        "m.yaml",
    )
    assert spec.methods == ["ce", "kd", "dkd"]
    assert spec.space["kd.alpha"]["when"] == {"param": "method", "in": ["kd"]} and "when" not in spec.space["lr"]
    kd = spec.trial_config({"method": "kd", "kd.alpha": 0.3, "lr": 0.05})
    assert (kd.method, kd.method_args, kd.lr) == ("kd", {"temperature": 2.0, "alpha": 0.3}, 0.05)
    dkd = spec.trial_config({"method": "dkd", "dkd.beta": 4.0, "lr": 0.05})
    assert dkd.method_args == {"alpha": 1.0, "beta": 4.0, "temperature": 4.0}
    assert spec.trial_config({"method": "ce", "lr": 0.05}).method_args == {}
    assert spec.fixed_config().method == "ce"  # the teacher's config does not depend on the draw


def test_a_grid_over_methods_crosses_each_method_with_its_own_grid_only():
    from kdsearch.settings.distributions import grid

    spec = parse_sweep(
        {
            "fixed": {"dataset": "digits"},
            "space": {
                "method": {"choice": ["ce", "kd", "dkd"]},
                "kd": {"alpha": {"choice": [0.5, 0.9]}, "temperature": {"choice": [2.0, 4.0]}},
                "dkd": {"beta": {"choice": [2.0, 8.0]}},
                "lr": {"choice": [0.05, 0.1]},
            },
            "search": {"sampler": "grid"},
        },
        "g.yaml",
    )
    assert spec.search.num_samples == (1 + 4 + 2) * 2 == len(grid(spec.space))


def test_a_schedule_in_the_space_searches_its_numbers_and_its_shape():
    spec = parse_sweep(
        {
            "fixed": {"method": "kd", "dataset": "digits"},
            "space": {
                "alpha": {"schedule": "linear", "start": {"uniform": [0.5, 1.0]}, "end": {"uniform": [0.0, 0.5]}},
                "temperature": {"schedule": {"choice": ["cosine", "linear"]}, "start": {"loguniform": [2, 16]}, "end": 1.0},
            },
        },
        "s.yaml",
    )
    assert set(spec.space) == {"alpha.start", "alpha.end", "temperature.schedule", "temperature.start"}
    cfg = spec.trial_config({"alpha.start": 0.8, "alpha.end": 0.1, "temperature.schedule": "linear", "temperature.start": 8.0})
    assert cfg.method_args == {
        "alpha": {"schedule": "linear", "start": 0.8, "end": 0.1},
        "temperature": {"schedule": "linear", "start": 8.0, "end": 1.0},
    }
    fixed = parse_sweep(
        {
            "fixed": {"method": "at", "dataset": "digits", "beta": {"schedule": "warmup", "epochs": 5, "value": 1000}},
            "space": {"weights": [{"schedule": "step", "values": [0, 1], "at": [0.3]}, 1.0, 1.0], "lr": {"uniform": [0.01, 0.1]}},
        },
        "f.yaml",
    )  # a schedule with nothing searched in it is a fixed setting, in space or fixed
    assert fixed.fixed_config().method_args["weights"][0]["schedule"] == "step"
    assert fixed.fixed_config().method_args["beta"] == {"schedule": "warmup", "epochs": 5.0, "value": 1000.0}


@pytest.mark.parametrize("path", ["search_spaces/fashion_mnist-methods.yaml", "search_spaces/fashion_mnist-kd-schedules.yaml"])
def test_the_shipped_method_and_schedule_spaces_resolve_on_digits(path):
    from pathlib import Path

    spec = load_sweep(Path(__file__).resolve().parent.parent / path, {"dataset": "digits", "train_subset": None})
    for method in spec.methods:
        assert spec.example_config(method).method == method
