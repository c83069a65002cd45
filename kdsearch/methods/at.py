"""Attention Transfer.

Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017. A stage's
attention map is the channel mean of |f|^p (p = 2), flattened and L2-normalised, so it
ignores the scale of the features; the loss adds beta/2 * the mean squared difference
of student and teacher maps for every matched stage, here with a weight per stage.

How stages are matched: from the deepest backwards. The student's last stage pairs with
the teacher's last stage, its second-to-last with the teacher's second-to-last, and so
on; a 4-stage ResNet-50 teacher's first stage is unused by a 3-stage small student. The
deepest stages are the ones both networks feed to their classifier, so they are the
pairs that always mean the same thing. When a pair's maps differ in size (a ResNet-50
stage at 4x4 against a student stage at 8x8), the larger map is average-pooled to the
smaller one (``resize="pool"``), or the pair is refused (``resize="error"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.errors import UserError
from kdsearch.methods.objective import Objective, Outputs


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): mean over channels of |f|^p, before normalisation."""
    return features.float().abs().pow(p).mean(dim=1)


def attention_distance(student_map: torch.Tensor, teacher_map: torch.Tensor, resize: str = "pool") -> torch.Tensor:
    """Mean squared difference of the L2-normalised maps, resizing the larger if asked."""
    if student_map.shape[-2:] != teacher_map.shape[-2:]:
        if resize != "pool":
            raise UserError(
                f"attention maps differ in size: student {tuple(student_map.shape[-2:])}, "
                f"teacher {tuple(teacher_map.shape[-2:])}; use resize: pool, or students with matching stages"
            )
        h = min(student_map.shape[-2], teacher_map.shape[-2])
        w = min(student_map.shape[-1], teacher_map.shape[-1])
        student_map = F.adaptive_avg_pool2d(student_map.unsqueeze(1), (h, w)).squeeze(1)
        teacher_map = F.adaptive_avg_pool2d(teacher_map.unsqueeze(1), (h, w)).squeeze(1)
    s = F.normalize(student_map.flatten(1), dim=1)
    t = F.normalize(teacher_map.flatten(1), dim=1)
    return (s - t).pow(2).mean()


class AttentionTransfer(nn.Module):
    needs_teacher = True
    needs_teacher_features = True  # a teacher cache must hold attention maps (for p = 2) to serve it

    def __init__(
        self,
        beta: float = 1000.0,
        weights: list[float] | None = None,
        p: float = 2.0,
        alpha: float = 0.0,
        temperature: float = 4.0,
        resize: str = "pool",
        *,
        objective: Objective,
    ):
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha (the weight of the optional KD term) must be in [0, 1], got {alpha}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if resize not in ("pool", "error"):
            raise ValueError(f"resize must be 'pool' or 'error', got {resize!r}")
        if weights is not None and (not isinstance(weights, (list, tuple)) or any(not w >= 0 for w in weights)):
            raise ValueError(f"weights must be a list of non-negative numbers, one per matched stage, got {weights!r}")
        self.beta, self.p, self.alpha, self.temperature = float(beta), float(p), float(alpha), float(temperature)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.resize, self.objective = resize, objective

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs | None = None, inputs: torch.Tensor | None = None) -> dict:
        student_maps = [attention_map(f, self.p) for f in student.features]
        teacher_maps = teacher.attention if teacher.attention is not None else [attention_map(f, self.p) for f in teacher.features]
        k = min(len(student_maps), len(teacher_maps))
        pairs = list(zip(student_maps[len(student_maps) - k :], teacher_maps[len(teacher_maps) - k :]))
        weights = self.weights if self.weights is not None else [1.0] * k
        if len(weights) != k:
            raise UserError(f"AT has {len(weights)} stage weights but the student and teacher share {k} matched stages: give {k} weights")
        at = sum(w * attention_distance(s, t, self.resize) for w, (s, t) in zip(weights, pairs))
        ce = self.objective.hard(student.logits, targets)
        terms = {"ce": ce, "at": at}
        loss = ce + self.beta / 2 * at
        if self.alpha > 0:
            kd = self.objective.soft(student.logits, teacher.logits, self.temperature)
            loss = (1.0 - self.alpha) * ce + self.alpha * kd + self.beta / 2 * at
            terms["kd"] = kd
        return {"loss": loss, **terms}
