"""A trial as kdsearch sees it (no Ray types), and reading trials back from a sweep folder.

Ray Tune keeps each trial's sampled settings in ``trial_*/params.json`` and one JSON line
per reported epoch in ``trial_*/result.json``; those plain files are enough to report on a
sweep or to sync it to MLflow, without Ray.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from kdsearch.errors import UserError


@dataclass
class TrialRecord:
    trial_id: str
    params: dict  # the sampled values
    history: list[dict]  # one dict of metrics per epoch
    status: str  # TERMINATED or ERROR
    error: str | None = None
    best_checkpoint: str | None = None  # folder holding student.pt at the trial's best epoch
    path: str | None = None

    def best(self, metric: str, mode: str) -> float:
        values = [h[metric] for h in self.history if isinstance(h.get(metric), (int, float)) and math.isfinite(h[metric])]
        if not values:
            return -math.inf if mode == "max" else math.inf
        return max(values) if mode == "max" else min(values)

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


def load_trials(sweep_dir: Path) -> list[TrialRecord]:
    trials = []
    for folder in sorted(Path(sweep_dir).glob("trial_*")):
        params_path, result_path = folder / "params.json", folder / "result.json"
        if not params_path.is_file():
            continue
        history = []
        if result_path.is_file():
            for line in result_path.read_text().splitlines():
                try:
                    history.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut short by a kill: the epochs before it stand
        error_file = folder / "error.txt"
        error = error_file.read_text().strip().splitlines()[-1][:300] if error_file.is_file() and error_file.read_text().strip() else None
        trials.append(TrialRecord(trial_id=folder.name.removeprefix("trial_"), params=json.loads(params_path.read_text()), history=history,
                                  status="ERROR" if error_file.is_file() else "TERMINATED", error=error, path=str(folder)))  # fmt: skip
    if not trials:
        raise UserError(f"{sweep_dir} holds no trials yet: run the sweep first")
    return trials
