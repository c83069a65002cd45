"""Decoupled Knowledge Distillation.

Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022. Hinton's KD
loss splits into two parts that it weighs against each other by the teacher's confidence in
the target class; DKD weighs them freely:

    loss = CE + alpha * TCKD + beta * NCKD
    TCKD = T^2 KL(b_teacher || b_student), b = (p_target, 1 - p_target) at temperature T
    NCKD = T^2 KL(p~_teacher || p~_student), p~ = softmax over the non-target classes alone

The paper's defaults are alpha 1, beta 8, T 4, with both terms ramped in linearly over the
first epochs (20 of 240 on CIFAR): in kdsearch that warmup is a schedule on alpha and beta,
e.g. ``beta: {schedule: warmup, epochs: 2, value: 8}``. Single-label data only: the split
into target and non-target classes has no meaning for independent attributes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsearch.methods.base import Method, Reads
from kdsearch.methods.task_loss import Outputs, TaskLoss


class DecoupledKD(Method):
    reads = Reads(teacher={"logits"})

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, *, objective: TaskLoss):
        super().__init__(objective=objective)
        if objective.multilabel:
            raise ValueError(
                "DKD is single-label (it splits the target class from the others): use kd or at for multi-label data"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not (alpha >= 0 and beta >= 0):
            raise ValueError(f"alpha and beta must be >= 0, got {alpha} and {beta}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)

    def decoupled(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor):
        """(TCKD, NCKD), each already scaled by T^2 and averaged over the batch."""
        t = self.temperature
        s, q = student_logits.float() / t, teacher_logits.float() / t
        target = F.one_hot(targets, s.shape[1]).bool()
        # Target vs all the rest: log-probabilities of the two events, from log-sum-exps (stable).
        log_s, log_q = F.log_softmax(s, dim=1), F.log_softmax(q, dim=1)
        s_bin = torch.stack([log_s[target], torch.logsumexp(log_s.masked_fill(target, -torch.inf), dim=1)], dim=1)
        q_bin = torch.stack([log_q[target], torch.logsumexp(log_q.masked_fill(target, -torch.inf), dim=1)], dim=1)
        tckd = F.kl_div(s_bin, q_bin, log_target=True, reduction="batchmean") * t * t
        # The non-target classes alone: the target's logit removed before the softmax.
        s_non = F.log_softmax(s.masked_fill(target, -torch.inf), dim=1).masked_fill(target, 0.0)
        q_non = F.log_softmax(q.masked_fill(target, -torch.inf), dim=1).masked_fill(target, 0.0)
        nckd = (q_non.exp() * (q_non - s_non)).sum(dim=1).mean() * t * t
        return tckd, nckd

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs, inputs: torch.Tensor | None = None) -> dict:
        ce = self.objective.hard(student.logits, targets)
        tckd, nckd = self.decoupled(student.logits, teacher.logits, targets)
        return {"loss": ce + self.alpha * tckd + self.beta * nckd, "ce": ce, "tckd": tckd, "nckd": nckd}
