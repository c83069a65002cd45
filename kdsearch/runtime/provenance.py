"""How to reproduce a run: the package versions, the git commit and the exact command line.

Recorded beside a sweep's best student (``best/provenance.json``), inside checkpoints, and as
MLflow tags on the sweep's parent run. Versions are read from package metadata, so nothing
heavy is imported to learn them.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("kdsearch", "torch", "torchvision", "ray", "optuna", "mlflow", "numpy")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(folder: Path | None = None) -> dict:
    """The commit of the repository the run was started in (the working folder), and whether it
    had uncommitted changes; {} outside a repository or without git."""
    cwd = folder or Path.cwd()
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if commit is None:
        return {}
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {"commit": commit, "dirty": bool(dirty)}


def provenance(argv: list[str] | None = None) -> dict:
    argv = sys.argv if argv is None else argv
    command = (
        shlex.join(["kdsearch", *argv[1:]]) if argv and Path(argv[0]).name in ("kdsearch", "__main__.py") else shlex.join(argv)
    )
    return {
        "command": command,
        "cwd": str(Path.cwd()),
        "python": platform.python_version(),
        "versions": {p: v for p in PACKAGES if (v := _version(p)) is not None},
        "git": git_state(),
    }


def as_tags(record: dict) -> dict[str, str]:
    """The same, flat, as MLflow tags."""
    tags = {"kdsearch.command": record["command"][:5000], "kdsearch.python": record["python"]}
    tags.update({f"kdsearch.version.{p}": v for p, v in record["versions"].items()})
    if record["git"]:
        tags["kdsearch.git_commit"] = record["git"]["commit"] + ("-dirty" if record["git"]["dirty"] else "")
    return tags
