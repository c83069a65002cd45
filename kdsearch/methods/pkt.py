"""Probabilistic Knowledge Transfer.

Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV
2018. The batch's embeddings (the pooled features before the classifier) define, through the
cosine kernel K(a, b) = (cos(a, b) + 1) / 2, a conditional distribution over the batch for each
sample, p_j|i = K(a_i, a_j) / sum_k K(a_i, a_k); the student's is drawn to the teacher's by

    PKT = mean over all (i, j) of q_j|i * log((q_j|i + eps) / (p_j|i + eps)),  eps = 1e-7
    loss = (1 - alpha) * CE + alpha * KD_T + weight * PKT

with q the teacher's and p the student's distribution (the sums over k include k = i), as in
the authors' code. Widths may differ. Default weight 30,000: RepDistiller's CIFAR setting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsearch.methods.base import Method, Reads
from kdsearch.methods.logit_term import check_logit_term, with_logit_terms
from kdsearch.methods.task_loss import Outputs, TaskLoss

EPS = 1e-7


def conditional_similarity(e: torch.Tensor) -> torch.Tensor:
    """p_j|i from the cosine kernel, each row summing to 1."""
    n = F.normalize(e, p=2, dim=1, eps=EPS)
    kernel = (n @ n.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


class ProbabilisticKT(Method):
    reads = Reads(teacher={"logits", "embedding"}, student={"embedding"})

    def __init__(self, weight: float = 30000.0, alpha: float = 0.0, temperature: float = 4.0, *, objective: TaskLoss):
        super().__init__(objective=objective)
        if not weight >= 0:
            raise ValueError(f"weight (of the PKT term) must be >= 0, got {weight}")
        check_logit_term(alpha, temperature)
        self.weight, self.alpha, self.temperature = float(weight), float(alpha), float(temperature)

    def transfer(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = conditional_similarity(s.float())
        q = conditional_similarity(t.float().detach())
        return (q * torch.log((q + EPS) / (p + EPS))).mean()

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs, inputs: torch.Tensor | None = None) -> dict:
        pkt = self.transfer(student.embedding, teacher.embedding)
        loss, terms = with_logit_terms(self.objective, student, targets, teacher, alpha=self.alpha, temperature=self.temperature)
        return {"loss": loss + self.weight * pkt, **terms, "pkt": pkt}
