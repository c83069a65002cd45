"""The sweep's Optuna study, through Optuna's public API only (no Ray here).

A search space is the YAML's ``{name: {"kind", "args"}}`` mapping; an entry may carry
``"when": {"param": other, "in": [values]}``: it is drawn only when ``other`` was drawn with
one of those values (a define-by-run space). ``suggest`` draws a trial's settings from an
asked Optuna trial; ``build_sampler`` makes the sampler a search setting names; ``write_study``
saves the finished trials to the SQLite file optuna-dashboard opens.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import optuna

from kdsearch.errors import UserError, first_line
from kdsearch.search.record import measured
from kdsearch.settings.distributions import active, grid  # noqa: F401  (grid: the searcher enumerates it)

TRIAL_ATTR = "kdsearch.trial_id"  # an Optuna trial's user attribute: the kdsearch (Ray Tune) trial id
RUN_ATTR = "kdsearch.mlflow_run_id"  # and the MLflow run that logged it
REPEAT_ATTR = "kdsearch.repeat"  # a draw of settings already trained, told their result and drawn again


def quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def distribution(dist: dict) -> optuna.distributions.BaseDistribution:
    """One YAML distribution as Optuna's (``int`` bounds are inclusive, as written in YAML)."""
    kind, args = dist["kind"], dist["args"]
    if kind == "choice":
        return optuna.distributions.CategoricalDistribution(list(args))
    if kind == "int":
        return optuna.distributions.IntDistribution(int(args[0]), int(args[1]))
    return optuna.distributions.FloatDistribution(float(args[0]), float(args[1]), log=kind == "loguniform")


def distributions(space: dict) -> dict[str, optuna.distributions.BaseDistribution]:
    return {name: distribution(dist) for name, dist in space.items()}


def contains(dist: optuna.distributions.BaseDistribution, value) -> bool:
    """Whether ``value`` is one the distribution can draw (a value from a changed range is not)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return any(value == c and type(value) is type(c) for c in dist.choices)
    if not measured(value):
        return False
    if isinstance(dist, optuna.distributions.IntDistribution) and not float(value).is_integer():
        return False
    return dist.low <= value <= dist.high


def is_conditional(space: dict) -> bool:
    return any("when" in dist for dist in space.values())


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """A trial's settings, drawn by ``trial`` in the space's order (define-by-run: an entry whose
    condition does not hold is not drawn at all, so the sampler never sees it)."""
    drawn: dict = {}
    for name, dist in space.items():
        if not active(dist, drawn):
            continue
        kind, args = dist["kind"], dist["args"]
        if kind == "choice":
            drawn[name] = trial.suggest_categorical(name, list(args))
        elif kind == "int":
            drawn[name] = trial.suggest_int(name, int(args[0]), int(args[1]))
        else:
            drawn[name] = trial.suggest_float(name, float(args[0]), float(args[1]), log=kind == "loguniform")
    return drawn


def build_sampler(sampler: str, seed: int, *, startup_trials: int, population_size: int, conditional: bool, offset: int = 0):
    """The sampler a search names. ``offset`` (trials already told, on a resume) moves the seed,
    so a restored sampler does not draw the start of its sequence again."""
    seed = seed + offset if seed is not None else None
    if sampler in ("random", "grid"):  # a grid hands out its combinations itself
        return optuna.samplers.RandomSampler(seed=seed)
    if sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
    # constant_liar: a running trial counts as a bad guess, so trials asked while others run
    # (16-32 at once on a cluster) spread out instead of all getting the same suggestion.
    options = {"multivariate": True, "group": True} if conditional else {}
    with _experimental_quiet():
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, constant_liar=True, **options)


class _experimental_quiet:
    """Optuna warns at every use of an option it calls experimental (TPE's ``group``, the study's
    metric names), though both have been there since Optuna 3."""

    def __enter__(self):

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def new_study(name: str, directions: list[str], metric_names: list[str], sampler) -> optuna.Study:
    """An in-memory study: an SQLite one would write to disk inside Tune's loop at every trial
    (benchmarks/results/many-trials.md measured the cost); ``write_study`` saves it once."""
    quiet()
    study = optuna.create_study(
        storage=optuna.storages.InMemoryStorage(), sampler=sampler, study_name=name, directions=directions
    )
    with _experimental_quiet():
        study.set_metric_names(metric_names)
    return study


def read_finished(path: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    """The finished trials of study ``name`` in an SQLite file (a warm start writes them there)."""
    if not path.is_file():
        return []
    quiet()
    storage = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}")
    if name not in optuna.get_all_study_names(storage):
        return []
    study = optuna.load_study(study_name=name, storage=storage)
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]


def write_study(
    name: str, directions: list[str], metric_names: list[str], trials: list[optuna.trial.FrozenTrial], path: Path
) -> bool:
    """Write the finished ``trials`` to ``path``, atomically; a failure is a warning, never a lost
    sweep. True when written."""
    quiet()
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        disk = optuna.create_study(storage=f"sqlite:///{partial.resolve()}", study_name=name, directions=directions)
        with _experimental_quiet():
            disk.set_metric_names(metric_names)
        disk.add_trials([t for t in trials if t.state.is_finished()])
        del disk
        os.replace(partial, path)
        return True
    except Exception as exc:  # noqa: BLE001
        partial.unlink(missing_ok=True)
        print(
            f"warning: could not write the Optuna study to {path} ({first_line(exc)}); the sweep's results are unaffected",
            file=sys.stderr,
        )
        return False


def told_trial(
    params: dict, dists: dict, values: list[float] | None, epochs: int | None, score: float | None
) -> optuna.trial.FrozenTrial:
    """A finished trial as Optuna keeps it: complete with its values, or (``values`` None) pruned
    at the epoch it reached with its score there."""
    pruned = values is None
    return optuna.trial.create_trial(
        params=params,
        distributions={k: dists[k] for k in params},
        values=None if pruned else values,
        state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
        intermediate_values={epochs: score} if pruned and epochs and score is not None else None,
    )


def warm_start(spec, study: tuple[str, Path], trials: list, other: dict) -> int:
    """Tell a new sweep's study (``study``: its name and SQLite file, read by the searcher when it
    builds its study) the finished trials of another sweep (``other``: its manifest) over the
    parameters both spaces search: its sampler then models them from the first trial (TPE after
    ``n_startup_trials``, counting these). Each is told its score (``TrialRecord.score``), pruned
    where it was stopped early, as during its own sweep. Returns how many trials it was told."""

    name, path = study
    if spec.search.sampler == "grid":
        raise UserError("--warm-start tells a searcher earlier results; a grid has none: use sampler tpe, nsga2 or random")
    objectives = [list(o) for o in spec.search.objectives]
    if [list(o) for o in other.get("objectives", [])] != objectives:
        raise UserError(
            f"--warm-start {other['name']}: it optimised {other.get('objectives')}, this sweep {objectives}: warm-start from a sweep with the same objectives"
        )
    shared = [k for k in spec.space if k in (other.get("space") or {})]
    if not shared:
        raise UserError(
            f"--warm-start {other['name']}: it searched {', '.join(other.get('space') or {}) or 'nothing'}, this sweep "
            f"{', '.join(spec.space)}: no parameter in common to learn from"
        )
    dists = distributions({k: spec.space[k] for k in shared})
    full = max((len(t.history) for t in trials), default=0)  # epochs of a trial that was not stopped early
    known = []
    for trial in trials:
        best = trial.best_epoch(spec.search.objective)
        values = [best.get(o.metric) for o in spec.search.objectives]
        if trial.failure is not None or not all(measured(v) for v in values):
            continue
        params = {k: trial.params[k] for k in shared if k in trial.params and contains(dists[k], trial.params[k])}
        if params:
            early = len(trial.history) < full
            score = float(values[0]) if len(values) == 1 else None
            known.append(told_trial(params, dists, None if early else [float(v) for v in values], len(trial.history), score))
    quiet()
    target = optuna.create_study(
        storage=optuna.storages.RDBStorage(f"sqlite:///{Path(path).resolve()}"),
        study_name=name,
        directions=[o.direction for o in spec.search.objectives],
        load_if_exists=True,
    )
    target.add_trials(known)
    return len(known)


def label_runs(path: Path, name: str, run_ids: dict[str, str]) -> int:
    """Give each trial in the study file the MLflow run that logged it (``run_ids``: kdsearch trial
    id -> run id) where it has none yet: trials that finished before a ``--resume`` were logged by
    the earlier process, and an outage leaves runs to ``kdsearch sync``. Returns how many were added."""
    if not path.is_file():
        return 0
    quiet()
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{path.resolve()}")
    trials = study.get_trials(deepcopy=True)
    added = 0
    for trial in trials:
        run_id = run_ids.get(trial.user_attrs.get(TRIAL_ATTR))
        if run_id and trial.user_attrs.get(RUN_ATTR) != run_id:
            trial.set_user_attr(RUN_ATTR, run_id)
            added += 1
    if added:
        with _experimental_quiet():
            names = study.metric_names
        write_study(name, [d.name.lower() for d in study.directions], names or [], trials, path)
    return added
