"""An MLflow pyfunc model of a distilled student that needs no kdsearch: MLflow stores this file
as the model's code ("models from code") beside the student's ONNX file and its model card.

Input: uint8 images, (N, H, W, C) or (N, C, H, W), at the card's size, grey or colour as the
card says; they are normalised here with the card's mean and std. Output: a pandas DataFrame of
probabilities, one column per class name (multi-label: one sigmoid per attribute).
Needs mlflow, numpy, pandas and onnxruntime. Imports nothing from kdsearch, on purpose.
"""

import json

import mlflow
import numpy as np
import pandas as pd


class DistilledStudent(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import onnxruntime

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
        if x.ndim == 3:  # one grey image per row, (N, H, W)
            x = x[:, None]
        if x.ndim != 4:
            raise ValueError(f"expected images (N, H, W, C) or (N, C, H, W), got shape {x.shape}")
        if x.shape[1] != self.channels and x.shape[-1] == self.channels:
            x = x.transpose(0, 3, 1, 2)
        if x.shape[1:] != (self.channels, *self.size):
            raise ValueError(
                f"expected {self.size[0]}x{self.size[1]} images with {self.channels} channel(s), "
                f"(N, H, W, C) or (N, C, H, W), got shape {x.shape}"
            )
        return x

    def predict(self, context, model_input, params=None):
        if isinstance(model_input, dict):
            model_input = next(iter(model_input.values()))
        if isinstance(model_input, pd.DataFrame):
            model_input = np.stack(model_input.iloc[:, 0].to_numpy())
        x = (self._nchw(model_input).astype(np.float32) - self.mean) / self.std
        logits = self.session.run(None, {self.session.get_inputs()[0].name: x})[0].astype(np.float64)
        if self.multilabel:
            probs = 1.0 / (1.0 + np.exp(-logits))
        else:
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = z / z.sum(axis=1, keepdims=True)
        return pd.DataFrame(probs, columns=self.classes)


mlflow.models.set_model(DistilledStudent())
