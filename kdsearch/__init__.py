"""kdsearch: find the best way to distill a large network into a small one."""

from kdsearch.api import fit
from kdsearch.config import TrainConfig
from kdsearch.errors import UserError
from kdsearch.export import load_student
from kdsearch.train import FitResult

__all__ = ["TrainConfig", "FitResult", "UserError", "fit", "load_student"]
__version__ = "0.1.0"
