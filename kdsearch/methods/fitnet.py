"""FitNets: hints for thin deep nets.

Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep Nets", ICLR
2015. A middle stage of the teacher (the hint) guides the student's stage at the same depth: a
regressor r (trained with the student) maps the student's feature map to the hint's shape, and

    loss = (1 - alpha) * CE + alpha * KD_T + weight * mean((r(f_s) - f_t)^2)

the mean over every element of the batch's hint maps (the paper's 1/2 ||.||^2, scaled to a
mean as its successors' code does; weight 100, their CIFAR setting, makes up the scale). The
paper trains the hint first and KD after; here both train jointly from the first step, as in
RepDistiller and mdistiller. The regressor is a 3x3 convolution with batch norm and ReLU from
the student's channels to the teacher's; where the two maps differ in height and width the
larger is average-pooled to the smaller. ``stage`` counts stages from the deepest (-1) back,
in each network's own list (``features:`` names them for a model of the user's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.methods.base import Method, Reads, Seen
from kdsearch.methods.logit_term import check_logit_term, with_logit_terms
from kdsearch.methods.task_loss import Outputs, TaskLoss


def pooled_to_match(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two N x C x H x W maps brought to the smaller's height and width by average pooling."""
    h, w = min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1])
    if a.shape[-2:] != (h, w):
        a = F.adaptive_avg_pool2d(a, (h, w))
    if b.shape[-2:] != (h, w):
        b = F.adaptive_avg_pool2d(b, (h, w))
    return a, b


def stage_of(shapes: list, stage: int, role: str) -> int:
    """The index in ``shapes`` of ``stage`` (counted from the deepest, -1), or a one-line error."""
    if not -len(shapes) <= stage <= -1:
        raise ValueError(
            f"stage {stage} is not one of the {role}'s {len(shapes)} stages: give -1 (the deepest) to -{len(shapes)}"
        )
    return len(shapes) + stage


class FitNet(Method):
    reads = Reads(teacher={"logits", "features"}, student={"features"})

    def __init__(
        self,
        weight: float = 100.0,
        stage: int = -2,
        alpha: float = 0.0,
        temperature: float = 4.0,
        *,
        objective: TaskLoss,
    ):
        super().__init__(objective=objective)
        if not weight >= 0:
            raise ValueError(f"weight (of the hint term) must be >= 0, got {weight}")
        if int(stage) != stage or stage >= 0:
            raise ValueError(f"stage must be a negative integer (-1 the deepest stage, -2 the one before), got {stage}")
        check_logit_term(alpha, temperature)
        self.weight, self.stage, self.alpha, self.temperature = float(weight), int(stage), float(alpha), float(temperature)
        self.regressor: nn.Module | None = None

    def build(self, seen: Seen) -> None:
        s = seen.student_features[stage_of(seen.student_features, self.stage, "student")]
        t = seen.teacher_features[stage_of(seen.teacher_features, self.stage, "teacher")]
        self.regressor = nn.Sequential(
            nn.Conv2d(s[0], t[0], kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(t[0]), nn.ReLU(inplace=True)
        )

    def extra_modules(self) -> list[nn.Module]:
        return [self.regressor] if self.regressor is not None else []

    def hint_loss(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        guided, hint = pooled_to_match(self.regressor(student_map).float(), teacher_map.float())
        return (guided - hint).pow(2).mean()

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs, inputs: torch.Tensor | None = None) -> dict:
        if self.regressor is None:
            raise ValueError("FitNet's regressor is built from the shapes it will see: the trainer calls build() first")
        hint = self.hint_loss(student.features[self.stage], teacher.features[self.stage])
        loss, terms = with_logit_terms(self.objective, student, targets, teacher, alpha=self.alpha, temperature=self.temperature)
        return {"loss": loss + self.weight * hint, **terms, "hint": hint}
