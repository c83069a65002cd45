"""kdsearch's searcher: Ray Tune's public ``Searcher`` interface over Optuna's ask-and-tell API.

What it adds to Optuna behind Tune:
- **one score per trial**: a trial's score is the best value of its first objective over its
  epochs (the epoch whose checkpoint Tune keeps; on a tie, the later one, as Tune keeps it).
  Optuna is told the values of that epoch, and the report, MLflow and ``best/`` rank by it;
- **no settings trained twice**: a repeat of a finished trial is told that trial's result and
  drawn again, a repeat of a running one is told as failed and drawn again; after
  ``MAX_REDRAWS`` repeats in a row (a small discrete space, used up) the repeat is run;
- **a trial ASHA stopped is pruned**, at the epoch it reached with its score there: TPE ranks
  it below every trial that trained all its epochs (an accuracy after 1 epoch of a one-cycle
  schedule must not compete with others after 5);
- **define-by-run spaces** (``study.suggest``): a setting drawn only when another has a value;
- **grid, random, TPE (constant liar) and NSGA-II**, a grid enumerated here, so every sweep has
  an Optuna study;
- **state that pickles**: Tune pickles its searcher with the experiment; the Optuna study and
  sampler are rebuilt from plain data (its trials), whatever the sampler holds (threading
  locks, in Optuna 5.1's NSGA-II). ``save``/``restore`` carry it across ``--resume``.
"""

from __future__ import annotations

import pickle
import warnings
import weakref
from pathlib import Path

import optuna
from ray.tune.search import Searcher

from kdsearch.search import study as studies
from kdsearch.search.outcome import TrialProgress
from kdsearch.search.record import Objective

_LIVE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # study file -> the searcher in this process


def searcher_for(study_db: Path) -> StudySearcher | None:
    """The searcher of the sweep whose study is written to ``study_db``, in this process: the one
    the driver built, or the one Tune restored from the experiment on ``--resume``."""
    return _LIVE.get(str(Path(study_db).resolve()))


def settings_key(config: dict) -> tuple:
    return tuple(sorted((k, round(v, 10) if isinstance(v, float) else repr(v)) for k, v in config.items()))


class StudySearcher(Searcher):
    MAX_REDRAWS = 200  # an ask and a tell each: milliseconds

    def __init__(
        self,
        space: dict,
        objectives: list[tuple[str, str]],
        *,
        sampler: str = "tpe",
        seed: int | None = 0,
        startup_trials: int = 10,
        population_size: int = 50,
        max_epochs: int | None = None,
        study_name: str = "sweep",
        study_db: Path | None = None,
    ):
        metrics, modes = [m for m, _ in objectives], [m for _, m in objectives]
        super().__init__(metric=metrics[0] if len(metrics) == 1 else metrics, mode=modes[0] if len(modes) == 1 else modes)
        self.space = dict(space)
        self.objectives = [tuple(o) for o in objectives]
        self.sampler_name, self.seed = sampler, seed
        self.startup_trials, self.population_size = startup_trials, population_size
        self.max_epochs = max_epochs
        self.study_name = study_name
        self.study_db = str(Path(study_db).resolve()) if study_db is not None else None
        self.grid = studies.grid(space) if sampler == "grid" else None
        self.grid_next = 0
        self.known: list[optuna.trial.FrozenTrial] | None = None  # the study's trials, while it is not built
        self.results_by_settings: dict[tuple, dict | None] = {}  # None while a trial with them runs
        self.settings_of: dict[str, tuple] = {}  # Tune trial id -> its settings
        self.progress: dict[str, TrialProgress] = {}  # Tune trial id -> its best epoch so far and its last
        self._runtime()

    # -- the study, rebuilt from plain state ------------------------------------------------

    def _runtime(self) -> None:
        self._study: optuna.Study | None = None
        self._asked: dict[str, optuna.Trial] = {}
        if self.study_db is not None:
            _LIVE[self.study_db] = self

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_study", "_asked")}
        if self._study is not None:
            state["known"] = self._study.get_trials(deepcopy=True)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._runtime()

    @property
    def metrics(self) -> list[str]:
        return [m for m, _ in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [Objective(*o).direction for o in self.objectives]

    @property
    def study(self) -> optuna.Study:
        """The Optuna study, in memory: built at the first ask, with the trials it knew (a
        warm start's, read from the study file, or those of the state it was restored from)."""
        if self._study is None:
            if self.known is None and self.study_db is not None:
                known = studies.read_finished(Path(self.study_db), self.study_name)  # a warm start wrote them there
            else:
                known = list(self.known or [])
            finished = [t for t in known if t.state.is_finished()]
            sampler = studies.build_sampler(
                self.sampler_name,
                self.seed,
                startup_trials=self.startup_trials,
                population_size=self.population_size,
                conditional=studies.is_conditional(self.space),
                offset=len(finished),
            )
            self._study = studies.new_study(self.study_name, self.directions, self.metrics, sampler)
            self._study.add_trials(finished)
            for trial in known:
                if trial.state == optuna.trial.TrialState.RUNNING and studies.TRIAL_ATTR in trial.user_attrs:
                    self._reopen(trial)
            self.known = None
        return self._study

    def _reopen(self, frozen: optuna.trial.FrozenTrial) -> None:
        """A trial that was running when the state was saved, asked again with the same settings
        (Tune resumes it under the same id) and its reported epochs."""
        self._study.enqueue_trial(frozen.params, user_attrs=frozen.user_attrs)
        trial, _ = self._ask()
        for step, value in sorted(frozen.intermediate_values.items()):
            trial.report(value, step)
        self._asked[frozen.user_attrs[studies.TRIAL_ATTR]] = trial

    def _ask(self) -> tuple[optuna.Trial, dict]:
        if studies.is_conditional(self.space):
            trial = self.study.ask()
            return trial, studies.suggest(trial, self.space)
        trial = self.study.ask(fixed_distributions=studies.distributions(self.space))
        return trial, dict(trial.params)

    # -- Ray Tune's Searcher interface --------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space and objectives were given at construction; Tune's param_space is empty

    def suggest(self, trial_id: str):
        if self.grid is not None:
            if self.grid_next >= len(self.grid):
                return Searcher.FINISHED
            self.study.enqueue_trial(self.grid[self.grid_next])
            self.grid_next += 1
        for attempt in range(self.MAX_REDRAWS):
            trial, params = self._ask()
            key = settings_key(params)
            if self.grid is not None or key not in self.results_by_settings or attempt == self.MAX_REDRAWS - 1:
                break
            earlier = self.results_by_settings[key]
            trial.set_user_attr(studies.REPEAT_ATTR, True)  # not trained: told what the same settings got
            if earlier is None:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)  # the same settings are training now
            else:
                self._tell(trial, earlier)
        trial.set_user_attr(studies.TRIAL_ATTR, trial_id)
        self._asked[trial_id] = trial
        self.results_by_settings.setdefault(key, None)
        self.settings_of[trial_id] = key
        return params

    def _adopt(self, trial_id: str, result: dict | None) -> None:
        """A trial Tune resumed that this searcher never saw asked: it was drawn after the last
        saved state (the sweep was killed). Its settings come with its results ("config")."""
        self.study  # built first: a restored state's running trials are asked again there  # noqa: B018
        if trial_id in self._asked or trial_id in self.settings_of or not isinstance((result or {}).get("config"), dict):
            return
        params = {k: v for k, v in result["config"].items() if k in self.space}
        self.study.enqueue_trial(params)
        trial, drawn = self._ask()
        trial.set_user_attr(studies.TRIAL_ATTR, trial_id)
        self._asked[trial_id] = trial
        self.settings_of[trial_id] = settings_key(drawn)
        self.results_by_settings.setdefault(self.settings_of[trial_id], None)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._adopt(trial_id, result)
        trial = self._asked.get(trial_id)
        if trial is None:
            return
        progress = self.progress.setdefault(trial_id, TrialProgress(self.objectives))
        if not progress.note(result):
            return
        if len(self.objectives) == 1:
            with warnings.catch_warnings():  # a resumed trial repeats an epoch already reported: Optuna keeps the first
                warnings.simplefilter("ignore")
                trial.report(progress.score, progress.epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._adopt(trial_id, result)
        trial = self._asked.pop(trial_id, None)
        if trial is None:
            return  # not asked here, or told already
        if result and not error:
            # Tune hands the result that ended a trial to on_trial_complete only: report it too, so a
            # stopped trial is ranked at the epoch ASHA judged it.
            self._asked[trial_id] = trial
            self.on_trial_result(trial_id, result)
            del self._asked[trial_id]
        progress = self.progress.pop(trial_id, None)
        if error or progress is None or progress.best is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        outcome = progress.outcome(result or {}, self.max_epochs)
        self._tell(trial, outcome)
        self.results_by_settings[self.settings_of.get(trial_id, ())] = outcome

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))

    # -- what Optuna is told (search.outcome decides it) ------------------------------------------

    def _tell(self, trial: optuna.Trial, outcome: dict) -> None:
        if "values" in outcome:
            self.study.tell(trial, outcome["values"])
        elif "pruned" in outcome:
            if len(self.objectives) == 1:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    trial.report(outcome["score"], outcome["pruned"])
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    # -- the study on disk ----------------------------------------------------------------------

    def write_study(self, run_ids: dict[str, str] | None = None) -> bool:
        """Write the finished trials to the study file (``optuna-dashboard sqlite:///<file>``), each
        with the MLflow run that logged it where ``run_ids`` (Tune trial id -> run id) knows it."""
        if self.study_db is None:
            return False
        trials = self.study.get_trials(deepcopy=True)
        for trial in trials:
            run_id = (run_ids or {}).get(trial.user_attrs.get(studies.TRIAL_ATTR))
            if run_id:
                trial.set_user_attr(studies.RUN_ATTR, run_id)
        return studies.write_study(self.study_name, self.directions, self.metrics, trials, Path(self.study_db))
