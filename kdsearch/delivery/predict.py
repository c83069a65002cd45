"""``kdsearch predict``: a student's classes for image files, from whatever the user holds: an
export folder, a checkpoint, a sweep (its best student) or a registered MLflow model
(``models:/<name>@<alias>``, through its pyfunc flavour, as a server would run it).

Images are decoded as the model was trained: centre square crop, resized to the model card's
size, grey or colour as the card says, normalised with the card's mean and std.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kdsearch.data.imagefolder import SUFFIXES, decode
from kdsearch.delivery.export import CARD, load_student, model_card, normalise
from kdsearch.errors import UserError
from kdsearch.models.checkpoint import load_model
from kdsearch.search.folder import resolve_sweep
from kdsearch.tracking.uri import default_tracking_uri


def image_files(paths: list[str]) -> list[Path]:
    """The image files named, and those inside the folders named (recursively), in order."""
    out = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"{path} holds no images ({', '.join(sorted(SUFFIXES))})")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise UserError(f"{path} does not exist: pass image files or folders of them")
    return out


def _torch_predictor(model: torch.nn.Module, card: dict) -> Callable[[np.ndarray], np.ndarray]:

    multilabel = card["task"].startswith("multi-label")

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = model.eval()(normalise(torch.from_numpy(images), card["input"]["normalisation"])).double()
        return (torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).numpy()

    return run


def load_predictor(
    source: str, storage: str | None = None, tracking_uri: str | None = None
) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """(uint8 NCHW images -> probabilities, the model card) for any model source."""

    if source.startswith("models:/"):
        from kdsearch.delivery import registry  # MLflow takes seconds to import: only for a registered model

        model = registry.load_registered(source, tracking_uri or default_tracking_uri())
        card = model.unwrap_python_model().card
        # the pyfunc's signature takes (N, H, W, C), as a server's clients send it
        return (lambda images: model.predict(np.ascontiguousarray(images.transpose(0, 2, 3, 1))).to_numpy()), card
    path = Path(source)
    if path.is_dir() and (path / CARD).is_file():
        student = load_student(path)
        return _torch_predictor(student, student.kdsearch_card), student.kdsearch_card
    if not path.is_file():
        path = resolve_sweep(source, storage, tracking_uri).best_checkpoint()

    model, payload = load_model(path)
    card = model_card(payload)
    return _torch_predictor(model, card), card


def predict(
    source: str,
    images: list[str],
    top_k: int = 3,
    threshold: float = 0.5,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    batch_size: int = 64,
) -> list[dict]:
    """One entry per image: its top-k classes (multi-label: the attributes at or above
    ``threshold``) with probabilities, and every probability."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    run, card = load_predictor(source, storage, tracking_uri)
    files = image_files(images)
    channels, size = int(card["input"]["channels"]), card["input"]["size"]
    if size[0] != size[1]:
        raise UserError(f"the model takes {size[0]}x{size[1]} images; kdsearch predict decodes square ones only")
    classes = [str(c) for c in card["class_names"]]
    multilabel = card["task"].startswith("multi-label")
    out = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        batch = np.stack([decode(f, size[0], "L" if channels == 1 else "RGB") for f in chunk])
        for path, probs in zip(chunk, run(batch)):
            order = np.argsort(-probs)
            if multilabel:
                chosen = [i for i in order if probs[i] >= threshold]
            else:
                chosen = list(order[:top_k])
            out.append(
                {
                    "image": str(path),
                    "predictions": [{"class": classes[i], "probability": float(probs[i])} for i in chosen],
                    "probabilities": {c: float(p) for c, p in zip(classes, probs)},
                }
            )
    return out


def format_predictions(results: list[dict], multilabel_note: str = "") -> str:
    lines = []
    for r in results:
        shown = ", ".join(f"{p['class']} {p['probability']:.3f}" for p in r["predictions"]) or f"(none{multilabel_note})"
        lines.append(f"{r['image']}: {shown}")
    return "\n".join(lines)
