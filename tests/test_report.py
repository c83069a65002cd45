"""Reports of a sweep folder: the table, the plots, and which way each objective points."""

import json
import subprocess
import sys

import numpy as np
import pytest

from kdsearch.search.folder import load_trials
from kdsearch.search.record import Objective
from kdsearch.sweeper.report import _pareto, best_over_time, build_report


def _fake_sweep(folder, rows, objective=("val/acc", "max"), failed=(), same_size=False):
    """A finished sweep folder as Ray Tune and kdsearch leave it (trial logs + sweep.json);
    trials listed in ``failed`` diverged and end with the sentinel score."""
    space = {"temperature": {"kind": "loguniform", "args": [1.0, 20.0]}, "alpha": {"kind": "uniform", "args": [0.0, 1.0]}}
    (folder / "sweep.json").write_text(json.dumps({"name": "fake", "epochs": 3, "space": space, "objectives": [list(objective)]}))
    metric = objective[0]
    for i, (params, accs) in enumerate(rows):
        trial = folder / f"trial_t{i}"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps(params))
        lines = [
            json.dumps(
                {
                    "epoch": e + 1,
                    metric: a,
                    "timestamp": 100 * i + e,
                    "student/params": 1000 + (0 if same_size else i),
                    "done": e + 1 == len(accs),
                }
            )
            for e, a in enumerate(accs)
        ]
        if i in failed:
            sentinel = 0.0 if objective[1] == "max" else 1e30
            lines.append(
                json.dumps({metric: sentinel, "trial/diverged": 1.0, "trial/error": "diverged", "timestamp": 100 * i + 50})
            )
        (trial / "result.json").write_text("\n".join(lines) + "\n")


def test_report_table_and_plots(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        ({"temperature": float(t), "alpha": float(a)}, [0.5, 0.6 + a / 10, 0.7 + a / 5][: 3 if i % 2 else 1])
        for i, (t, a) in enumerate(zip(rng.uniform(1, 20, 6), rng.uniform(0, 1, 6)))
    ]
    _fake_sweep(tmp_path, rows)
    result = build_report(tmp_path)
    table = result["table"]
    assert len(table) == 6 and list(table["best val/acc"]) == sorted(table["best val/acc"], reverse=True)
    assert table["stopped early"].sum() == 3 and set(table["epochs run"]) == {1, 3}
    names = {p.name for p in result["files"]}
    assert {
        "trials.csv",
        "trials.md",
        "acc_vs_temperature.png",
        "acc_vs_alpha.png",
        "best_so_far.png",
        "pareto.png",
        "importances.png",
    } <= names
    from PIL import Image

    for path in result["files"]:
        if path.suffix != ".png":
            continue
        with Image.open(path) as img:  # a real figure: its size at 110 dpi, and drawn on
            assert img.size[0] in (550, 605) and img.size[1] >= 150, (path.name, img.size)
            pixels = np.asarray(img.convert("L"))
        assert (pixels < 128).mean() > 0.01, f"{path.name} is nearly blank"
    assert (tmp_path / "report" / "trials.md").read_text().startswith("| trial")
    assert "latency/cpu_ms" not in table and "student/flops" not in table  # no trial has them: not shown


def test_one_student_size_draws_no_size_plot(tmp_path):
    _fake_sweep(tmp_path, [({"temperature": float(t)}, [0.5 + t / 100]) for t in range(4)], same_size=True)
    result = build_report(tmp_path)
    names = {p.name for p in result["files"]}
    assert "pareto.png" not in names and "best_so_far.png" in names
    assert result["table"]["student/params"].tolist() == [1000] * 4


def test_pareto_front_keeps_only_undominated_points():
    points = [(1, 0.80), (2, 0.85), (2, 0.70), (3, 0.84), (4, 0.90), (5, 0.89)]
    assert _pareto(points) == [(1, 0.80), (2, 0.85), (4, 0.90)]


def test_min_objectives_are_minimised_and_failed_trials_leave_no_mark(tmp_path):
    # val/loss is minimised: the best-so-far curve falls, the table sorts ascending, the Pareto
    # front keeps lower values; a diverged trial's sentinel enters neither curve nor importances.
    rows = [({"temperature": 2.0 + i, "alpha": 0.1 * i}, [1.0 - 0.1 * i, 0.9 - 0.1 * i]) for i in range(5)]
    _fake_sweep(tmp_path, rows, objective=("val/loss", "min"), failed=(4,))
    trials = load_trials(tmp_path)
    xs, ys = best_over_time(trials, Objective("val/loss", "min"))
    assert len(xs) == 8 and ys == sorted(ys, reverse=True) and min(ys) == pytest.approx(0.6)
    table = build_report(tmp_path)["table"]
    assert list(table["best val/loss"][:4]) == sorted(table["best val/loss"][:4]) and table["best val/loss"].isna().sum() == 1
    assert table.set_index("trial").loc["t4", "status"] == "diverged"
    assert _pareto([(1, 0.5), (2, 0.4), (3, 0.6)], "min") == [(1, 0.5), (2, 0.4)]


def test_importances_of_a_large_sweep_use_a_fixed_sized_sample(tmp_path, monkeypatch):
    """fANOVA's cost grew faster than the sweep (2,000 trials: 80 s of a 85 s report); it now sees
    at most IMPORTANCE_TRIALS trials, the same seeded sample each time."""
    import optuna

    from kdsearch.sweeper import report

    rng = np.random.default_rng(0)
    rows = [
        ({"temperature": float(t), "alpha": float(a)}, [0.5 + a / 4])
        for t, a in zip(rng.uniform(1, 20, 60), rng.uniform(0, 1, 60))
    ]
    _fake_sweep(tmp_path, rows)
    monkeypatch.setattr(report, "IMPORTANCE_TRIALS", 25)
    seen = []
    real = optuna.importance.get_param_importances
    monkeypatch.setattr(
        optuna.importance, "get_param_importances", lambda study, **kw: seen.append(study.trials) or real(study, **kw)
    )
    result = build_report(tmp_path)
    assert "importances.png" in {p.name for p in result["files"]}
    build_report(tmp_path)
    assert [len(s) for s in seen] == [25, 25]
    assert [t.params for t in seen[0]] == [t.params for t in seen[1]]  # seeded: the same sample


@pytest.mark.slow  # a subprocess
def test_a_one_trial_sweep_skips_the_importances_without_loading_fanova(tmp_path):
    """One finished trial has nothing to compare: the report says so, and does not spend ~1.5 s
    importing Optuna's fANOVA (scikit-learn) to find that out (a fresh process: pytest's may have it)."""
    _fake_sweep(tmp_path, [({"temperature": 2.0, "alpha": 0.5}, [0.5, 0.6, 0.7])])
    probe = (
        "import sys\nfrom pathlib import Path\nfrom kdsearch.sweeper.report import build_report\n"
        f"notes = build_report(Path({str(tmp_path)!r}))['notes']\n"
        "print([n for n in notes if 'importances' in n], 'optuna.importance' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert run.stdout.strip() == "['parameter importances skipped: needs at least two finished trials'] False", run.stderr
