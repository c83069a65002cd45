"""Attention Transfer.

Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017. A stage's
attention map is the channel mean of |f|^p (p = 2), flattened and L2-normalised, so it
ignores the scale of the features; the loss adds beta/2 * the mean squared difference
of student and teacher maps for every matched stage, here with a weight per stage.

How stages are matched: by spatial size, the paper's convention. Walking from the
deepest stage of the network with fewer stages backwards, each stage pairs with the
deepest unused stage of the other network that has the same height and width and keeps
the order (shallow with shallow); a resnet20 student under a CIFAR-stem ResNet-50 pairs
32<->32, 16<->16, 8<->8 and leaves the teacher's 4x4 stage out. Where no stage of the
same size is left, the next stage backwards is taken, and the larger map is
average-pooled to the smaller one (``resize="pool"``) or the pair is refused
(``resize="error"``). The pairing is described once per run (``describe()``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from kdsearch.methods.attention_maps import attention_map
from kdsearch.methods.base import Method, Reads
from kdsearch.methods.logit_term import check_logit_term, with_logit_terms
from kdsearch.methods.task_loss import Outputs, TaskLoss


def attention_distance(student_map: torch.Tensor, teacher_map: torch.Tensor, resize: str = "pool") -> torch.Tensor:
    """Mean squared difference of the L2-normalised maps, resizing the larger if asked."""
    if student_map.shape[-2:] != teacher_map.shape[-2:]:
        if resize != "pool":
            raise ValueError(
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


def pair_stages(student_sizes: list[tuple[int, int]], teacher_sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(student stage, teacher stage) index pairs, shallow to deep, one per stage of the network with fewer stages."""
    swap = len(student_sizes) > len(teacher_sizes)
    few, many = (teacher_sizes, student_sizes) if swap else (student_sizes, teacher_sizes)
    pairs, limit = [], len(many)  # matches in `many` stay below `limit`, so the order is kept
    for i in range(len(few) - 1, -1, -1):
        same_size = [j for j in range(i, limit) if many[j] == few[i]]  # leave a stage of `many` for each shallower one of `few`
        j = same_size[-1] if same_size else limit - 1
        pairs.append((i, j))
        limit = j
    pairs.reverse()
    return [(j, i) for i, j in pairs] if swap else pairs


class AttentionTransfer(Method):
    # the teacher's attention maps of exponent p (set when built: ``reads_for``), the student's features
    reads = Reads(teacher={"logits", "attention"}, student={"features"})

    def __init__(
        self,
        beta: float = 1000.0,
        weights: list[float] | None = None,
        p: float = 2.0,
        alpha: float = 0.0,
        temperature: float = 4.0,
        resize: str = "pool",
        *,
        objective: TaskLoss,
    ):
        super().__init__(objective=objective)
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        check_logit_term(alpha, temperature)
        if not p > 0:
            raise ValueError(f"p (the exponent of the attention maps) must be > 0, got {p}")
        if resize not in ("pool", "error"):
            raise ValueError(f"resize must be 'pool' or 'error', got {resize!r}")
        if weights is not None and (not isinstance(weights, (list, tuple)) or any(not w >= 0 for w in weights)):
            raise ValueError(f"weights must be a list of non-negative numbers, one per matched stage, got {weights!r}")
        self.beta, self.attention_p, self.alpha, self.temperature = float(beta), float(p), float(alpha), float(temperature)
        self.reads = self.reads_for({"p": p})
        self.weights = None if weights is None else [float(w) for w in weights]
        self.resize = resize
        self._pairing: str | None = None

    @classmethod
    def reads_for(cls, settings) -> Reads:
        return dataclasses.replace(cls.reads, attention_p=float(settings.get("p", 2.0)))

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs, inputs: torch.Tensor | None = None) -> dict:
        student_maps = [attention_map(f, self.attention_p) for f in student.features]
        teacher_maps = (
            teacher.attention if teacher.attention is not None else [attention_map(f, self.attention_p) for f in teacher.features]
        )
        if not student_maps or not teacher_maps:
            raise ValueError(
                "attention transfer needs feature maps from the student and the teacher: name their modules with "
                "features: {student: [...], teacher: [...]}"
            )
        index = pair_stages([tuple(m.shape[-2:]) for m in student_maps], [tuple(m.shape[-2:]) for m in teacher_maps])
        k = len(index)
        weights = self.weights if self.weights is not None else [1.0] * k
        if len(weights) != k:
            raise ValueError(
                f"AT has {len(weights)} stage weights but the student and teacher share {k} matched stages: give {k} weights"
            )
        if self._pairing is None:
            self._pairing = self._describe_pairs(index, student.features, teacher)
        at = sum(w * attention_distance(student_maps[i], teacher_maps[j], self.resize) for w, (i, j) in zip(weights, index))
        loss, terms = with_logit_terms(self.objective, student, targets, teacher, alpha=self.alpha, temperature=self.temperature)
        return {"loss": loss + self.beta / 2 * at, **terms, "at": at}

    @staticmethod
    def _describe_pairs(index, student_features, teacher: Outputs) -> str:
        def shape(f):
            return "x".join(str(d) for d in f.shape[1:])

        teacher_shapes = (
            [shape(f) for f in teacher.features]
            if teacher.features
            else ["x".join(map(str, a.shape[-2:])) for a in teacher.attention]
        )
        return "AT pairs: " + ", ".join(
            f"teacher stage {j + 1} ({teacher_shapes[j]}) <-> student stage {i + 1} ({shape(student_features[i])})"
            for i, j in index
        )

    def describe(self) -> str | None:
        return self._pairing
