"""An MLflow pyfunc model of a distilled student that needs no kdsearch: MLflow stores this file
as the model's code ("models from code") beside the student's ONNX file and its model card.

Input: uint8 images as (N, H, W, C), at the card's size, with the card's channel count (grey
images are (N, H, W, 1)); the model's signature says the same shape, so MLflow refuses anything
else before it gets here. They are normalised here with the card's mean and std. Output: a pandas DataFrame of
probabilities, one column per class name (multi-label: one sigmoid per attribute).
Needs mlflow, numpy, pandas and onnxruntime. Imports nothing from kdsearch, on purpose.
"""

import json

import mlflow
import numpy as np
import pandas as pd


class DistilledStudent(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import onnxruntime  # loaded by MLflow where the model serves

        with open(context.artifacts["card"]) as f:
            self.card = json.load(f)
        self.session = onnxruntime.InferenceSession(context.artifacts["model"], providers=["CPUExecutionProvider"])
        spec = self.card["input"]
        self.channels = int(spec["channels"])
        self.size = tuple(int(v) for v in spec["size"])
        self.mean = np.asarray(spec["normalisation"]["mean"], dtype=np.float32).reshape(1, -1, 1, 1) * 255.0
        self.std = np.asarray(spec["normalisation"]["std"], dtype=np.float32).reshape(1, -1, 1, 1) * 255.0
        self.classes = list(self.card["class_names"])
        self.multilabel = self.card["task"].startswith("multi-label")

    def _nchw(self, images):
        x = np.asarray(images)
        expected = (-1, *self.size, self.channels)
        if x.ndim != 4 or x.shape[1:] != expected[1:]:
            raise ValueError(
                f"expected uint8 images of shape (N, {expected[1]}, {expected[2]}, {expected[3]}) "
                f"(N, height, width, channels), got shape {x.shape}"
            )
        return x.transpose(0, 3, 1, 2)

    def predict(self, context, model_input: np.ndarray, params=None):
        if isinstance(model_input, dict):
            model_input = next(iter(model_input.values()))
        if isinstance(model_input, pd.DataFrame):  # one column, a flattened image per row
            rows = np.stack([np.asarray(v).ravel() for v in model_input.iloc[:, 0]])
            model_input = rows.reshape(len(rows), *self.size, self.channels)
        x = (self._nchw(model_input).astype(np.float32) - self.mean) / self.std
        logits = self.session.run(None, {self.session.get_inputs()[0].name: x})[0].astype(np.float64)
        if self.multilabel:
            probs = 1.0 / (1.0 + np.exp(-logits))
        else:
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = z / z.sum(axis=1, keepdims=True)
        return pd.DataFrame(probs, columns=self.classes)


mlflow.models.set_model(DistilledStudent())
