"""A sweep's best trials as the parent run's description in the MLflow UI: a Markdown table of
the best trials, linked to their runs, and a link to MLflow's page comparing them, so a sweep of
2,000 trials is compared without scrolling its runs table."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

TOP_HEADING = "**Top "  # a description that starts so is kdsearch's own: replaced as the sweep goes, a user's is kept


def leaderboard(top: list, scored: int, objective, run_ids: dict[str, str], experiment_id: str) -> str:
    """The Markdown of the ``top`` trials (best first, of ``scored`` usable ones): rank, a link to
    each trial's run, its score by ``objective`` and its settings (the first 6 names)."""
    names = list(dict.fromkeys(k for t in top for k in t.params))[:6]
    rows = [
        f"| {rank} | [trial_{t.trial_id}](#/experiments/{experiment_id}/runs/{run_ids[t.trial_id]}) "
        f"| {t.score(objective):.4f} | " + " | ".join(_cell(t.params.get(k)) for k in names) + " |"
        for rank, t in enumerate(top, start=1)
    ]
    link = compare_link(experiment_id, [run_ids[t.trial_id] for t in top])
    return "\n".join(
        [
            f"{TOP_HEADING}{len(top)} of {scored} trials by {objective.metric}** ([compare them side by side]({link}))",
            "",
            "| rank | trial | " + " | ".join([objective.metric, *names]) + " |",
            "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
            *rows,
        ]
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return (json.dumps(value) if isinstance(value, (list, dict)) else str(value)).replace("|", "/")[:24]


def compare_link(experiment_id: str, run_ids: list[str]) -> str:
    """MLflow UI's page comparing these runs (relative to the UI's address)."""
    ids, experiments = json.dumps(run_ids, separators=(",", ":")), json.dumps([experiment_id])
    return f"#/compare-runs?runs={quote(ids)}&experiments={quote(experiments)}"
