"""Soft-target knowledge distillation.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015:
loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T).
"""

from __future__ import annotations

import torch
from torch import nn

from kdsearch.methods.objective import Objective, Outputs


class HintonKD(nn.Module):
    needs_teacher = True

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, *, objective: Objective):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature, self.alpha, self.objective = float(temperature), float(alpha), objective

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs | None = None, inputs: torch.Tensor | None = None) -> dict:
        ce = self.objective.hard(student.logits, targets)
        kd = self.objective.soft(student.logits, teacher.logits, self.temperature)
        return {"loss": (1.0 - self.alpha) * ce + self.alpha * kd, "ce": ce, "kd": kd}
