"""Soft-target knowledge distillation.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015:
loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T).
"""

from __future__ import annotations

import torch

from kdsearch.methods.base import Method, Reads
from kdsearch.methods.task_loss import Outputs, TaskLoss


class HintonKD(Method):
    reads = Reads(teacher={"logits"})

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, *, objective: TaskLoss):
        super().__init__(objective=objective)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature, self.alpha = float(temperature), float(alpha)

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs, inputs: torch.Tensor | None = None) -> dict:
        ce = self.objective.hard(student.logits, targets)
        kd = self.objective.soft(student.logits, teacher.logits, self.temperature)
        return {"loss": (1.0 - self.alpha) * ce + self.alpha * kd, "ce": ce, "kd": kd}
