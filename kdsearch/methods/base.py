"""The contract every distillation method keeps with the trainer.

A method is an ``nn.Module`` whose constructor arguments are its hyperparameters and whose
``forward(student, targets, teacher, inputs)`` returns ``{"loss": total, <term>: value}``.
What it needs is declared here and decided when it is built, so the trainer, the
precomputed teacher outputs and the sweep ask the method instead of probing it:

- ``needs_teacher``: the teacher's logits every step (``teacher`` is then never None);
- ``needs_attention``: the teacher's attention maps of exponent ``attention_p``;
- ``extra_modules()``: modules trained along with the student (DML's peers);
- ``describe()``: a line worth logging once per run (AT's stage pairing).

Invalid settings raise ``ValueError``; the boundary (``build_method``, the trainer) turns
it into the one-line ``UserError`` a user sees.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from kdsearch.methods.task_loss import Outputs, TaskLoss


class Method(nn.Module):
    needs_teacher: bool = False
    needs_attention: bool = False
    attention_p: float = 2.0

    def __init__(self, *, objective: TaskLoss):
        super().__init__()
        self.objective = objective

    @classmethod
    def uses_teacher(cls, settings: Mapping[str, object]) -> bool:
        """Whether a method built with these settings needs a teacher (known before building it)."""
        return cls.needs_teacher

    def extra_modules(self) -> list[nn.Module]:
        return []

    def describe(self) -> str | None:
        """A line the trainer logs once, after the first epoch (AT: how stages were paired)."""
        return None

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs | None, inputs: torch.Tensor) -> dict:
        raise NotImplementedError
