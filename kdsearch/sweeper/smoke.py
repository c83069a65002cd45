"""`kdsearch sweep --smoke`: did the set-up learn? A teacher and a student well above chance."""

from __future__ import annotations

import torch

from kdsearch.errors import UserError


def chance_accuracy(data) -> float:
    """The accuracy of always answering the most frequent class (per attribute, for attributes)."""
    if data.multilabel:
        p = data.train_y.float().mean(0)
        return float(torch.maximum(p, 1 - p).mean())
    counts = torch.bincount(data.train_y, minlength=data.num_outputs)
    return float(counts.max() / counts.sum())


def smoke_check(data, teacher, best_metrics: dict) -> str:
    """Whether a --smoke run learned: the teacher (if any) and the best student well above chance
    on validation; else a one-line UserError, since a set-up that learns nothing is broken."""
    chance = chance_accuracy(data)
    margin = 0.05 + 0.1 * (1 - chance)  # well clear of chance, on a few hundred validation images
    scores = {"best student": best_metrics.get("val/acc", 0.0)}
    if teacher is not None and "val/acc" in teacher.metrics:
        scores = {"teacher": teacher.metrics["val/acc"], **scores}
    text = ", ".join(f"{who} val/acc {acc:.3f}" for who, acc in scores.items())
    stuck = [who for who, acc in scores.items() if acc < chance + margin]
    images = len(data.train_x)
    if stuck:
        raise UserError(
            f"smoke check: {text} on {images:,} training images, not above chance ({chance:.3f}, the most frequent class) "
            f"for the {' and the '.join(stuck)}: nothing learns; check the data files, their labels and lr"
        )
    return f"smoke check: {text} on {images:,} training images, chance {chance:.3f}: the set-up learns"
