"""kdsearch: find the best way to distill a large network into a small one."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from kdsearch.config import TrainConfig
from kdsearch.errors import UserError

if TYPE_CHECKING:
    from kdsearch.api import fit
    from kdsearch.data import DatasetSplits
    from kdsearch.delivery.export import load_student
    from kdsearch.sweeper.run import sweep
    from kdsearch.training.engine import FitResult

__all__ = ["DatasetSplits", "TrainConfig", "FitResult", "UserError", "fit", "load_student", "sweep"]
__version__ = "0.1.0"


# Imported when first used, so `import kdsearch` (and the command line's --help) does not load
# torch, Ray or MLflow.
_LAZY = {
    "fit": "kdsearch.api",
    "DatasetSplits": "kdsearch.data",
    "load_student": "kdsearch.delivery.export",
    "FitResult": "kdsearch.training.engine",
    "sweep": "kdsearch.sweeper.run",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdsearch' has no attribute {name!r}")
