"""The student trained alone on the labels: the baseline every distillation gain is measured against."""

from __future__ import annotations

import torch
from torch import nn

from kdsearch.methods.objective import Objective, Outputs


class CrossEntropy(nn.Module):
    needs_teacher = False

    def __init__(self, *, objective: Objective):
        super().__init__()
        self.objective = objective

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs | None = None, inputs: torch.Tensor | None = None) -> dict:
        ce = self.objective.hard(student.logits, targets)
        return {"loss": ce, "ce": ce}
