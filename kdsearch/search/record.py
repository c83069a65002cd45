"""A trial as kdsearch sees it, and the one definition of its score (no Ray types).

A trial's **score** is the best value of the sweep's first objective over the epochs it trained:
the epoch whose student it keeps (on a tie, the later one, as its checkpoint is). The trainable
reports it as it goes (``score_so_far``, ``trial/score``), the searcher tells Optuna the epoch it
comes from, and the progress table, the MLflow leaderboard, the report, a warm start and the
best trial all rank by it (``ranked``: on a tie, the trial that started first). A trial is
**usable** when it did not fail and has a score. An ``Objective`` knows its direction.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import NamedTuple

FIXED_KEY = "fixed"  # the key of every trial's Tune config that holds the fixed settings


def sign(mode: str) -> int:
    """+1 where more is better (``max``), -1 where less is (``min``): ``sign * value`` grows as it improves."""
    return 1 if mode == "max" else -1


class Objective(NamedTuple):
    """A metric and whether more (``max``) or less (``min``) of it is better."""

    metric: str
    mode: str = "max"

    @property
    def sign(self) -> int:
        return sign(self.mode)

    @property
    def direction(self) -> str:
        """Optuna's word for the mode."""
        return "maximize" if self.mode == "max" else "minimize"

    @property
    def worst(self) -> float:
        return -math.inf * self.sign

    @property
    def failed_value(self) -> float:
        """What a failed trial reports: a finite worst (the searcher learns to avoid its region;
        JSON holds no infinity): 0 for a metric to maximise, 1e30 for one to minimise."""
        return 0.0 if self.mode == "max" else 1e30

    def at_least_as_good(self, value: float, than: float) -> bool:
        return self.sign * value >= self.sign * than

    def best(self, values) -> float:
        """The best of ``values`` that were measured; ``worst`` when none was."""
        kept = [float(v) for v in values if measured(v)]
        return (max(kept) if self.mode == "max" else min(kept)) if kept else self.worst


def measured(value) -> bool:
    """A finite number (not a bool): what an epoch reports of a metric it measured."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def score_so_far(score: float | None, metrics: dict, objective: Objective) -> float | None:
    """The score after an epoch with ``metrics``, given the score before it (None before any)."""
    value = metrics.get(objective.metric)
    if not measured(value):
        return score
    return float(value) if score is None else objective.best([score, value])


def searched(config: dict) -> dict:
    """A trial's Tune config without its fixed settings: the values the searcher drew."""
    return {k: v for k, v in config.items() if k != FIXED_KEY}


def error_line(text: str) -> str:
    """What a trial's record keeps of its error: the last line (the exception), at most 300 characters."""
    return text.strip().splitlines()[-1][:300]


@dataclass
class TrialRecord:
    trial_id: str
    params: dict  # the sampled values
    history: list[dict]  # one dict of metrics per epoch
    status: str  # TERMINATED or ERROR
    error: str | None = None
    best_checkpoint: str | None = None  # folder holding student.pt at the trial's best epoch
    path: str | None = None

    @classmethod
    def read(
        cls, trial_id: str, config: dict, history: list[dict], *, error: str | None, path=None, best_checkpoint=None
    ) -> TrialRecord:
        """A trial as Tune left it: its config (the fixed settings left out), its history
        (``parse_history``), and its error's text when it raised (None when it did not)."""
        return cls(
            trial_id=str(trial_id),
            params=searched(config),
            history=history,
            status="TERMINATED" if error is None else "ERROR",
            error=error_line(error) if error and error.strip() else None,
            best_checkpoint=best_checkpoint,
            path=path,
        )

    def score(self, objective: Objective) -> float:
        """The trial's score (the module's docstring): the same number in the Optuna study, the
        report, MLflow (``trial/score``) and ``best/``; ``objective.worst`` without one."""
        return objective.best(h.get(objective.metric) for h in self.history)

    def usable(self, objective: Objective) -> bool:
        """Whether the trial counts: it did not fail and has a score."""
        return self.failure is None and math.isfinite(self.score(objective))

    def best_epoch(self, objective: Objective) -> dict:
        """The result of the epoch the score comes from (on a tie, the later one: a trial keeps the
        student of the later of two epochs with the same score, ``EpochTrainable.step``); {} without one."""
        score, found = self.score(objective), {}
        for row in self.history:
            if row.get(objective.metric) == score:
                found = row
        return found

    @property
    def diverged(self) -> bool:
        return bool(self.history and self.history[-1].get("trial/diverged"))

    @property
    def invalid(self) -> bool:
        """Ended by a setting it drew that cannot work (a kdsearch.errors.UserError in the trial)."""
        return bool(self.history and self.history[-1].get("trial/invalid"))

    @property
    def failure(self) -> str | None:
        """Why the trial failed (diverged, invalid settings, or an error), else None."""
        if self.diverged or self.invalid:
            return str(self.history[-1].get("trial/error") or ("diverged" if self.diverged else "invalid settings"))
        return (self.error or "error") if self.status == "ERROR" else None


def ranked(trials: list[TrialRecord], objective: Objective) -> list[TrialRecord]:
    """The trials best first, by score; on a tie the trial that started first (Ray Tune's trial
    ids count up); trials that are not usable last."""

    def key(t: TrialRecord):
        usable = t.usable(objective)
        return (not usable, -objective.sign * t.score(objective) if usable else 0.0, t.trial_id)

    return sorted(trials, key=key)


def parse_history(text: str) -> list[dict]:
    """A trial's result.json as one dict an epoch: a line cut short by a kill ends it (the epochs
    before it stand), each line's copy of the config is left out, and an epoch written again (a
    trial restarted from an earlier checkpoint) replaces it and every later one."""
    rows: list[dict] = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        row.pop("config", None)
        while rows and epoch_of(row) is not None and (epoch_of(rows[-1]) or 0) >= epoch_of(row):
            rows.pop()
        rows.append(row)
    return rows


def epoch_of(row: dict):
    """The epoch a result line is of (Tune's training_iteration where it has no epoch)."""
    return row.get("epoch", row.get("training_iteration"))
