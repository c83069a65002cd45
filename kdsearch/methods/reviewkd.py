"""Distilling Knowledge via Knowledge Review.

Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021. Each teacher
stage is taught not by the student's stage of the same depth alone but by that stage fused with
all the student's deeper ones ("review"): walking from the deepest stage to the shallowest,
an attention-based fusion (ABF) module merges the stage's features with what the deeper stages
passed down, and a head maps the result to the teacher's stage's shape. The hierarchical context
loss compares each pair at several pooled sizes:

    ABF_i:  x_i = BN(conv1x1(f_s,i))                               (mid channels)
            x_i = x_i * a_0 + up(r_{i+1}) * a_1,  (a_0, a_1) = sigmoid(conv1x1([x_i, up(r_{i+1})]))
            r_i = x_i,  g_i = resize(BN(conv3x3(x_i)))             (the teacher's channels and size)
    HCL(g, f_t) = sum over sizes l of w_l * mse(pool_l(g), pool_l(f_t)) / sum of w_l,
                  sizes: the map's own, then 4, 2, 1 where smaller than it; w = 1, 1/2, 1/4, 1/8
    ReviewKD = sum over the stages of HCL
    loss = (1 - alpha) * CE + alpha * KD_T + weight * ReviewKD

The deepest "stage" is the pooled embedding before the classifier, as a 1 x 1 map (the paper
reviews it too); the stages are the last min(student's, teacher's) of each network's list
(``features:`` names them for a model of the user's), paired from the deepest. up() and
resize() are nearest-neighbour; mid = min(512, the student's deepest stage's channels). The
paper ramps the weight in over its first 20 of 240 epochs: in kdsearch a schedule,
``weight: {schedule: warmup, epochs: 2, value: 1}``. Default weight 1 (the paper's CIFAR setting).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.methods.base import Method, Reads, Seen
from kdsearch.methods.logit_term import check_logit_term, with_logit_terms
from kdsearch.methods.task_loss import Outputs, TaskLoss


class AttentionFusion(nn.Module):
    """One ABF module: a student stage merged with what the deeper stages pass down."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        self.expand = nn.Sequential(nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor, passed: torch.Tensor | None, out_size: tuple[int, int]):
        x = self.reduce(x)
        if self.attention is not None:
            passed = F.interpolate(passed, size=x.shape[-2:], mode="nearest")
            a = self.attention(torch.cat([x, passed], dim=1))
            x = x * a[:, 0:1] + passed * a[:, 1:2]
        out = self.expand(x)
        if out.shape[-2:] != tuple(out_size):
            out = F.interpolate(out, size=out_size, mode="nearest")
        return out, x


def hierarchical_context_loss(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """HCL of one stage pair of the same shape (see the module's docstring)."""
    h = g.shape[-2]
    sizes = [None] + [level for level in (4, 2, 1) if level < h]
    total, weights = 0.0, 0.0
    for i, size in enumerate(sizes):
        w = 0.5**i
        a, b = (g, t) if size is None else (F.adaptive_avg_pool2d(g, size), F.adaptive_avg_pool2d(t, size))
        total = total + w * F.mse_loss(a, b)
        weights += w
    return total / weights


def with_embedding(features: list[torch.Tensor], embedding: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The last ``n`` stages and the embedding as a 1 x 1 map, shallow to deep."""
    return [*features[len(features) - n :], embedding.reshape(*embedding.shape, 1, 1)]


class ReviewKD(Method):
    reads = Reads(teacher={"logits", "features", "embedding"}, student={"features", "embedding"})

    def __init__(self, weight: float = 1.0, alpha: float = 0.0, temperature: float = 4.0, *, objective: TaskLoss):
        super().__init__(objective=objective)
        if not weight >= 0:
            raise ValueError(f"weight (of the review term) must be >= 0, got {weight}")
        check_logit_term(alpha, temperature)
        self.weight, self.alpha, self.temperature = float(weight), float(alpha), float(temperature)
        self.fusions: nn.ModuleList | None = None
        self.stages = 0

    def build(self, seen: Seen) -> None:
        self.stages = min(len(seen.student_features), len(seen.teacher_features))
        student = [s[0] for s in seen.student_features[len(seen.student_features) - self.stages :]] + [seen.student_embedding]
        teacher = [t[0] for t in seen.teacher_features[len(seen.teacher_features) - self.stages :]] + [seen.teacher_embedding]
        mid = min(512, seen.student_features[-1][0]) if seen.student_features else min(512, seen.student_embedding)
        # shallow to deep, as the features are; the deepest (the embedding) fuses nothing passed down
        self.fusions = nn.ModuleList(
            AttentionFusion(s, mid, t, fuse=i < len(student) - 1) for i, (s, t) in enumerate(zip(student, teacher))
        )

    def extra_modules(self) -> list[nn.Module]:
        return [self.fusions] if self.fusions is not None else []

    def reviewed(self, student: Outputs, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """The student's reviewed features, one per teacher stage (of these sizes), shallow to deep."""
        maps = with_embedding(student.features, student.embedding, self.stages)
        out, passed = [None] * len(maps), None
        for i in range(len(maps) - 1, -1, -1):  # deepest first: each passes its fused features down
            out[i], passed = self.fusions[i](maps[i], passed, sizes[i])
        return out

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs, inputs=None) -> dict:
        if self.fusions is None:
            raise ValueError("ReviewKD's fusion modules are built from the shapes they will see: the trainer calls build() first")
        teacher_maps = with_embedding(teacher.features, teacher.embedding, self.stages)
        reviewed = self.reviewed(student, [tuple(t.shape[-2:]) for t in teacher_maps])
        review = sum(hierarchical_context_loss(g.float(), t.float().detach()) for g, t in zip(reviewed, teacher_maps))
        loss, terms = with_logit_terms(self.objective, student, targets, teacher, alpha=self.alpha, temperature=self.temperature)
        return {"loss": loss + self.weight * review, **terms, "review": review}
