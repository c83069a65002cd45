"""Relational Knowledge Distillation.

Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019. The student learns the
relations among the batch's embeddings (the pooled features before the classifier), not the
embeddings themselves, so the two networks' widths may differ:

    distance:  psi_D(a_i, a_j) = ||a_i - a_j||_2 / mu,  mu = the mean distance over pairs i != j
    angle:     psi_A(a_i, a_j, a_k) = <e_ij, e_kj>,  e_ij = (a_i - a_j) / ||a_i - a_j||_2
    RKD = distance_weight * mean over all (i, j) of huber(psi_D(t), psi_D(s))
        + angle_weight * mean over all (i, j, k) of huber(psi_A(t), psi_A(s))
    loss = (1 - alpha) * CE + alpha * KD_T + RKD

huber is the smooth L1 loss with delta 1 (the paper's l_delta). The means run over every
ordered pair and triplet of the batch, the terms of coinciding points included (they are 0 on
both sides), as the authors' code does. Defaults: distance 25 and angle 50, the setting of
RepDistiller's and mdistiller's CIFAR benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsearch.methods.base import Method, Reads
from kdsearch.methods.logit_term import check_logit_term, with_logit_terms
from kdsearch.methods.task_loss import Outputs, TaskLoss


def distance_relations(e: torch.Tensor) -> torch.Tensor:
    """psi_D for every pair: N x N distances over their mean off the diagonal."""
    d = torch.cdist(e, e).clone()
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off].mean().clamp_min(1e-12)


def angle_relations(e: torch.Tensor) -> torch.Tensor:
    """psi_A for every triplet: out[j, i, k] = cos of the angle at a_j between a_i and a_k."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # diff[j, i] = e_ij, 0 where i == j
    return torch.bmm(diff, diff.transpose(1, 2))


class RelationalKD(Method):
    reads = Reads(teacher={"logits", "embedding"}, student={"embedding"})

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        alpha: float = 0.0,
        temperature: float = 4.0,
        *,
        objective: TaskLoss,
    ):
        super().__init__(objective=objective)
        if not (distance_weight >= 0 and angle_weight >= 0):
            raise ValueError(f"distance_weight and angle_weight must be >= 0, got {distance_weight} and {angle_weight}")
        check_logit_term(alpha, temperature)
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)
        self.alpha, self.temperature = float(alpha), float(temperature)

    def relational(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance term, angle term) of student and teacher embeddings, before their weights."""
        s, t = s.float(), t.float().detach()
        distance = F.smooth_l1_loss(distance_relations(s), distance_relations(t))
        angle = F.smooth_l1_loss(angle_relations(s), angle_relations(t))
        return distance, angle

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs, inputs: torch.Tensor | None = None) -> dict:
        distance, angle = self.relational(student.embedding, teacher.embedding)
        loss, terms = with_logit_terms(self.objective, student, targets, teacher, alpha=self.alpha, temperature=self.temperature)
        total = loss + self.distance_weight * distance + self.angle_weight * angle
        return {"loss": total, **terms, "distance": distance, "angle": angle}
