"""The hard-label term and the optional soft-target KD term that feature and relation methods
add their own term to: ``(1 - alpha) * CE + alpha * KD_T + weight * <the method's term>``
(alpha 0, the default, leaves CE alone; CRD+KD in its paper is alpha > 0)."""

from __future__ import annotations

import torch

from kdsearch.methods.task_loss import Outputs, TaskLoss


def check_logit_term(alpha: float, temperature: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the weight of the optional KD term) must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def with_logit_terms(
    objective: TaskLoss, student: Outputs, targets: torch.Tensor, teacher: Outputs, *, alpha: float, temperature: float
) -> tuple[torch.Tensor, dict]:
    """(the CE and KD part of the loss, the terms to log)."""
    ce = objective.hard(student.logits, targets)
    if alpha <= 0:
        return ce, {"ce": ce}
    kd = objective.soft(student.logits, teacher.logits, temperature)
    return (1.0 - alpha) * ce + alpha * kd, {"ce": ce, "kd": kd}
