"""kdsearch: find the best way to distill a large network into a small one."""

from kdsearch.api import fit
from kdsearch.config import TrainConfig
from kdsearch.data import DatasetSplits
from kdsearch.errors import UserError
from kdsearch.export import load_student
from kdsearch.train import FitResult

__all__ = ["DatasetSplits", "TrainConfig", "FitResult", "UserError", "fit", "load_student", "sweep"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # kdsearch.sweep imports Ray and MLflow: only when it is used, so `import kdsearch` stays light.
    if name == "sweep":
        from kdsearch.sweeper import sweep

        return sweep
    raise AttributeError(f"module 'kdsearch' has no attribute {name!r}")
