"""Where a sweep's MLflow store is and how to open it, without importing MLflow (the summary
printed after a sweep, and ``kdsearch train``, never load it)."""

from __future__ import annotations

from pathlib import Path


def default_tracking_uri() -> str:
    """MLflow's own default (a sqlite file in the working directory), made absolute so that
    the `mlflow ui` command printed at the end works from anywhere."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def ui_command(tracking_uri: str, name: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    default = tracking_uri == default_tracking_uri()
    return f"kdsearch ui --name {name}" + ("" if default else f" --tracking-uri {tracking_uri}")
