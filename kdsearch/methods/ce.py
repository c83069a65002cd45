"""The student trained alone on the labels: the baseline every distillation gain is measured against."""

from __future__ import annotations

import torch

from kdsearch.methods.base import Method
from kdsearch.methods.task_loss import Outputs


class CrossEntropy(Method):
    def forward(
        self, student: Outputs, targets: torch.Tensor, teacher: Outputs | None = None, inputs: torch.Tensor | None = None
    ) -> dict:
        ce = self.objective.hard(student.logits, targets)
        return {"loss": ce, "ce": ce}
