"""What the Optuna study is told of a trial, from the results it reports epoch by epoch (no Ray).

A trial is followed as it trains (``TrialProgress.note``): its best epoch so far by the first
objective (on a tie the later one, as its checkpoint is: ``record``'s score) and its last epoch.
When it ends (``outcome``) the study is told the values of its best epoch; a trial stopped before
``max_epochs`` (by ASHA) is pruned at the epoch it reached with its score there, ranked below
every trial that trained all its epochs; a diverged or invalid trial's sentinel values are told
as complete, so the search learns to avoid that region.
"""

from __future__ import annotations

from kdsearch.search.record import Objective, measured


class TrialProgress:
    """A trial's best epoch so far and its last epoch, for ``objectives`` (the first decides)."""

    def __init__(self, objectives: list[Objective]):
        self.objectives = [Objective(*o) for o in objectives]
        self.best: dict | None = None  # the objectives' values at the best epoch
        self.epoch = 0

    def note(self, result: dict) -> bool:
        """Take an epoch's result; False when it has no value of the first objective."""
        first = self.objectives[0]
        value = result.get(first.metric)
        if not measured(value):
            return False
        self.epoch = max(self.epoch, int(result.get("training_iteration") or 0))
        if self.best is None or first.at_least_as_good(value, self.best[first.metric]):  # a tie: the later epoch
            self.best = {o.metric: result[o.metric] for o in self.objectives if isinstance(result.get(o.metric), (int, float))}
        return True

    @property
    def score(self) -> float:
        return float(self.best[self.objectives[0].metric])

    def outcome(self, last: dict, max_epochs: int | None) -> dict:
        """What the study is told once the trial ended with ``last``: {"values": [...]},
        {"pruned": epoch, "score": value} or {"failed": True}."""
        metrics = [o.metric for o in self.objectives]
        if last.get("trial/diverged") or last.get("trial/invalid"):
            return {"values": [float(last[m]) for m in metrics]}
        if max_epochs and self.epoch < max_epochs:
            return {"pruned": self.epoch, "score": self.score}
        if not all(m in self.best for m in metrics):
            return {"failed": True}
        return {"values": [float(self.best[m]) for m in metrics]}
