"""What every method shares: the hard-label loss and the temperature-softened KL.

Single-label tasks use softmax cross-entropy and a KL between softmax distributions;
multi-label tasks (CelebA's 40 attributes) treat each output as its own Bernoulli
variable: BCE for the labels and a per-attribute binary KL for distillation. A softmax
across attributes would be wrong there: attributes are not mutually exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Outputs(NamedTuple):
    """What a network gives a method in one step: its logits, its stage outputs (shallow to deep),
    the attention maps of a cached teacher (in place of its features when those are not kept; see
    kdsearch.teacher.outputs), and its pooled embedding before the classifier, when the method
    reads them (``Method.reads``)."""

    logits: torch.Tensor
    features: list[torch.Tensor]
    attention: list[torch.Tensor] | None = None
    embedding: torch.Tensor | None = None


@dataclass(frozen=True)
class TaskLoss:
    multilabel: bool = False
    label_smoothing: float = 0.0

    def hard(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.multilabel:
            t = targets.float()
            if self.label_smoothing:
                t = t * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            return F.binary_cross_entropy_with_logits(logits, t)
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def soft(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """KL(teacher_T || student_T) * T^2, averaged over the batch (and attributes).

        The T^2 factor keeps the gradient scale independent of T (Hinton et al. 2015, sec. 2).
        """
        t = temperature
        s = student_logits.float() / t
        q = teacher_logits.float() / t
        if self.multilabel:
            p_q = torch.sigmoid(q)
            # log p = logsigmoid(z) and log(1 - p) = logsigmoid(-z), stable for large |z|.
            kl = p_q * (F.logsigmoid(q) - F.logsigmoid(s)) + (1 - p_q) * (F.logsigmoid(-q) - F.logsigmoid(-s))
            return kl.mean() * (t * t)
        return F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(q, dim=1), log_target=True, reduction="batchmean") * (t * t)
