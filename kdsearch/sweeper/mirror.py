"""The sweep folder mirrored to MLflow: one mirror, used at the end of a sweep and by
``kdsearch sync`` (after an outage). Everything a sweep produces is written to its folder first;
MLflow only mirrors it, so a server that fails loses nothing (``guard_mlflow``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdsearch.delivery.registry import register_student
from kdsearch.errors import first_line
from kdsearch.search.folder import SweepFolder
from kdsearch.search.record import Objective, TrialRecord, ranked
from kdsearch.search.study import label_runs
from kdsearch.tracking import runs as tracking


@dataclass
class BestStudent:
    """The best trial as MLflow shows it: its searched values, its whole config, its tested
    metrics and its student file."""

    params: dict
    config: dict
    metrics: dict
    student: Path


def guard_mlflow(step: Callable[[], object], tracking_uri: str, name: str) -> bool:
    """Run an MLflow step; if the server fails, say so (always, on stderr) and how to catch up, but lose nothing."""
    try:
        step()
        return True
    except Exception as exc:  # noqa: BLE001 - any failure of the tracking store
        first = first_line(exc, 160)
        print(
            f"kdsearch: warning: MLflow at {tracking_uri} failed ({first}); every result is in the sweep folder: "
            f"run `kdsearch sync {name}` once it is back",
            file=sys.stderr,
            flush=True,
        )
        return False


def mirror(
    tracker: tracking.SweepTracker,
    trials: list[TrialRecord],
    objective: Objective,
    best: BestStudent | None,
    *,
    register_as: str | None,
    report_files: list[Path],
    methods: list[dict] | None = None,
) -> int:
    """Every trial's epochs not logged yet, the leaderboard, and with a best trial: the best
    student (registered as ``register_as`` unless None), the report's files and the best trial
    of each method; then the parent run is finished. Returns how many epochs were added."""
    added = tracker.sync(trials)
    tracker.log_top(ranked(trials, objective), objective)
    if best is None:
        return added
    tracker.log_best(best.params, best.config, best.metrics, best.student)
    if register_as is not None:
        register_student(tracker.tracking_uri, tracker.parent_id, best.student, register_as)
    if report_files:
        tracking.log_report_to_run(tracker.parent_id, tracker.tracking_uri, report_files)
    if methods is not None:
        tracker.log_methods(methods, objective.metric)
    tracker.finish()
    return added


def label_study(folder: SweepFolder, name: str, tracker: tracking.SweepTracker) -> None:
    """Each trial of the Optuna study file gets the MLflow run that logged it."""
    if label_runs(folder.study_db, name, tracker.run_ids()):
        folder.publish([folder.study_db])


def sync_sweep(folder: SweepFolder, tracking_uri: str | None = None) -> dict:
    """Push a sweep folder's trials, best student and report to MLflow (after an outage)."""
    manifest = folder.read_manifest()
    uri = tracking_uri or manifest["tracking_uri"]
    tracker = tracking.SweepTracker(
        uri,
        experiment=manifest["name"],
        sweep_dir=manifest["sweep_dir"],
        tags={k: manifest[k] for k in ("method", "dataset", "teacher", "student")},
    )
    tracker.start({})
    trials = folder.trials()
    stored = folder.read_best()
    best = BestStudent(manifest.get("best_params", {}), *stored, folder.best_student) if stored is not None else None
    report = sorted(p for p in folder.report_dir.iterdir() if p.is_file()) if folder.report_dir.is_dir() else []
    objective = Objective(*manifest["objectives"][0])
    added = mirror(tracker, trials, objective, best, register_as=f"{manifest['name']}-student", report_files=report)
    label_study(folder, manifest["name"], tracker)
    return {"trials": len(trials), "epochs_added": added, "parent_run_id": tracker.parent_id, "tracking_uri": uri}
