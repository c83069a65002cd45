"""What kdsearch hands over to serve a student without kdsearch (``mlflow_model.py``)."""

from pathlib import Path

MLFLOW_MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
