"""The best student as a registered MLflow model: logged as a pyfunc that serves without
kdsearch, registered under the sweep's name, and read back by ``models:/`` URI."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path

from mlflow import MlflowClient

from kdsearch.delivery.export import CARD, FILES, export_student, normalise
from kdsearch.errors import UserError, first_line
from kdsearch.models.checkpoint import load_model
from kdsearch.tracking.runs import download_best_student

# The registered model's own code: MLflow stores this file with the model and runs it where
# kdsearch is not installed, so it imports nothing of kdsearch.
MLFLOW_MODEL_CODE = Path(__file__).with_name("served_model.py")
CHAMPION = "champion"  # the alias of the registered version that is the best student


def register_student(tracking_uri: str, run_id: str, checkpoint: Path, name: str) -> str:
    """Log the student as an MLflow pyfunc model that loads without kdsearch (its ONNX file, its
    model card and ``kdsearch/delivery/served_model.py`` as the model's code; input uint8 images,
    output class probabilities), register it as ``name`` and point the alias ``champion`` at the
    new version. Also logs the native ``mlflow.pytorch`` flavour (not registered: it unpickles
    kdsearch's classes). Returns the version."""
    import mlflow.pyfunc  # MLflow's model flavours take seconds to import: only when a model is logged or loaded
    import mlflow.pytorch  # (as above)
    import numpy as np
    import torch
    from mlflow.models import ModelSignature  # (as above)
    from mlflow.types import ColSpec, Schema, TensorSpec  # (as above)

    mlflow.set_tracking_uri(tracking_uri)
    model, payload = load_model(checkpoint)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        export_student(checkpoint, ["onnx"], folder)  # verified against the checkpoint before it is logged
        card = json.loads((Path(folder) / CARD).read_text())
        sample = (payload.get("verify") or {}).get("x")
        if sample is None:
            size = card["input"]["size"]
            sample = torch.zeros(2, card["input"]["channels"], *size, dtype=torch.uint8)
        example = sample[:2].permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C) uint8, real validation images
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *card["input"]["size"], card["input"]["channels"]))]),
            outputs=Schema([ColSpec("double", str(c)) for c in card["class_names"]]),
        )
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="student",
                python_model=str(MLFLOW_MODEL_CODE),
                artifacts={"model": str(Path(folder) / FILES["onnx"]), "card": str(Path(folder) / CARD)},
                pip_requirements=serving_requirements(),
                signature=signature,
                input_example=example,
                registered_model_name=name,
            )
            floats = normalise(sample[:2], card["input"]["normalisation"]).numpy()  # this flavour takes normalised floats
            mlflow.pytorch.log_model(
                model.eval(), name="pytorch_student", pip_requirements=["torch", "kdsearch"], input_example=floats
            )
    version = str(info.registered_model_version)
    MlflowClient(tracking_uri).set_registered_model_alias(name, CHAMPION, version)
    return version


def serving_requirements() -> list[str]:
    """What the pyfunc model needs, pinned to the versions it is logged with."""

    return [f"{name}=={version(name)}" for name in ("mlflow", "onnxruntime", "numpy", "pandas")]


def _registered_version(uri: str, tracking_uri: str):
    """The model version ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` names."""
    rest = uri.removeprefix("models:/")
    name, sep, alias = rest.partition("@")
    client = MlflowClient(tracking_uri)
    try:
        if sep:
            return client.get_model_version_by_alias(name, alias)
        name, _, version = rest.rpartition("/")
        return client.get_model_version(name, version)
    except Exception as exc:  # noqa: BLE001 - not registered, or the store is unreachable
        first = first_line(exc, 160)
        raise UserError(
            f"no registered model {uri} at {tracking_uri} ({first}): pass models:/<name>-student@champion, or --tracking-uri"
        ) from None


def load_registered(uri: str, tracking_uri: str):
    """The registered pyfunc model (``models:/<name>@<alias>``), loaded as a server would."""
    import mlflow.pyfunc  # MLflow's model flavours take seconds to import: only when a model is logged or loaded

    _registered_version(uri, tracking_uri)  # a one-line error when it is not there
    mlflow.set_tracking_uri(tracking_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.pyfunc.load_model(uri)


def download_registered_student(uri: str, tracking_uri: str, dest_dir: Path) -> Path:
    """The kdsearch checkpoint behind a registered model: the best student of the run that logged it."""
    version = _registered_version(uri, tracking_uri)
    return download_best_student(version.run_id, tracking_uri, dest_dir)
