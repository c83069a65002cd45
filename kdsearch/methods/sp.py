"""Similarity-Preserving Knowledge Distillation.

Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019. Inputs that the
teacher's features find alike should be alike in the student's: for a stage's feature maps Q
(b x c x h x w, flattened to b x chw), the batch's similarity G = Q Q^T, each row scaled to unit
L2 norm (G~[i] = G[i] / ||G[i]||_2), and

    SP = 1 / b^2 * sum over the stages of ||G~_t - G~_s||_F^2
    loss = (1 - alpha) * CE + alpha * KD_T + weight * SP

The maps' channels and sizes may differ (G is b x b either way). ``stages`` lists the stages,
counted from the deepest (-1) back in each network's own list; the default, the last stage
alone, and weight 3,000 are RepDistiller's CIFAR setting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsearch.methods.base import Method, Reads
from kdsearch.methods.logit_term import check_logit_term, with_logit_terms
from kdsearch.methods.task_loss import Outputs, TaskLoss


def similarity(q: torch.Tensor) -> torch.Tensor:
    """G~: the batch's b x b similarity of the flattened maps, rows scaled to unit L2 norm."""
    flat = q.float().flatten(1)
    return F.normalize(flat @ flat.t(), p=2, dim=1)


class SimilarityPreserving(Method):
    reads = Reads(teacher={"logits", "features"}, student={"features"})

    def __init__(
        self,
        weight: float = 3000.0,
        stages: list[int] | None = None,
        alpha: float = 0.0,
        temperature: float = 4.0,
        *,
        objective: TaskLoss,
    ):
        super().__init__(objective=objective)
        if not weight >= 0:
            raise ValueError(f"weight (of the SP term) must be >= 0, got {weight}")
        stages = [-1] if stages is None else stages
        if not isinstance(stages, (list, tuple)) or not stages or any(int(s) != s or s >= 0 for s in stages):
            raise ValueError(f"stages must be a list of negative integers (-1 the deepest stage), got {stages!r}")
        check_logit_term(alpha, temperature)
        self.weight, self.stages = float(weight), [int(s) for s in stages]
        self.alpha, self.temperature = float(alpha), float(temperature)

    def preserving(self, student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
        b = student_maps[0].shape[0]
        total = 0.0
        for stage in self.stages:
            if -stage > min(len(student_maps), len(teacher_maps)):
                raise ValueError(
                    f"stage {stage} is past the {min(len(student_maps), len(teacher_maps))} stages the student and teacher share"
                )
            diff = similarity(teacher_maps[stage].detach()) - similarity(student_maps[stage])
            total = total + diff.pow(2).sum() / (b * b)
        return total

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs, inputs: torch.Tensor | None = None) -> dict:
        sp = self.preserving(student.features, teacher.features)
        loss, terms = with_logit_terms(self.objective, student, targets, teacher, alpha=self.alpha, temperature=self.temperature)
        return {"loss": loss + self.weight * sp, **terms, "sp": sp}
