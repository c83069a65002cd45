"""Contrastive Representation Distillation.

Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020. The student's
embedding (the pooled features before the classifier) is drawn to the teacher's embedding of
the same image and pushed from the teacher's embeddings of other images, by noise-contrastive
estimation against a memory bank of every training image's embedding:

    v_s = normalise(W_s e_s),  v_t = normalise(W_t e_t)          (heads of width dim, trained)
    h(v, m) = exp(v . m / tau) / Z                                  (Z fixed at the first batch:
                                                                     the mean of exp(.) times N)
    for each image i, the positive m_i and K negatives m_j (j uniform over the N training images):
    NCE(v) = -[ log(h_pos / (h_pos + K/N)) + sum over negatives of log((K/N) / (h_neg + K/N)) ]
    CRD = mean over the batch of NCE(v_s against the teacher's bank) + NCE(v_t against the student's bank)
    loss = (1 - alpha) * CE + alpha * KD_T + weight * CRD

(an eps of 1e-7 beside each K/N denominator). After each step the banks move to the batch's
embeddings: m_i <- normalise(momentum * m_i + (1 - momentum) * v_i). Each image is known by its
index in the training split (``Reads.index``). Defaults are the paper's: dim 128, K 16,384
(at most N - 1 on a smaller training split, said once), tau 0.07, momentum 0.5, weight 0.8;
CRD+KD is ``alpha`` > 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.methods.base import Method, Reads, Seen
from kdsearch.methods.logit_term import check_logit_term, with_logit_terms
from kdsearch.methods.task_loss import Outputs, TaskLoss

EPS = 1e-7


def nce_loss(scores: torch.Tensor, num_samples: int) -> torch.Tensor:
    """NCE over (batch, 1 + K) normalised scores, the positive first; summed over each row's terms,
    averaged over the batch."""
    k = scores.shape[1] - 1
    noise = k / num_samples
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    negatives = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(positive.sum() + negatives.sum()) / scores.shape[0]


class ContrastiveRD(Method):
    reads = Reads(teacher={"logits", "embedding"}, student={"embedding"}, index=True)

    def __init__(
        self,
        *,  # settings by name, as the trainer and a sweep give them
        weight: float = 0.8,
        dim: int = 128,
        negatives: int = 16384,
        nce_temperature: float = 0.07,
        momentum: float = 0.5,
        alpha: float = 0.0,
        temperature: float = 4.0,
        objective: TaskLoss,
    ):
        super().__init__(objective=objective)
        if not weight >= 0:
            raise ValueError(f"weight (of the CRD term) must be >= 0, got {weight}")
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim (the embedding heads' width) must be a positive integer, got {dim}")
        if int(negatives) != negatives or negatives < 1:
            raise ValueError(f"negatives must be a positive integer, got {negatives}")
        if not nce_temperature > 0:
            raise ValueError(f"nce_temperature must be > 0, got {nce_temperature}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum (of the memory bank) must be in [0, 1), got {momentum}")
        check_logit_term(alpha, temperature)
        self.weight, self.dim, self.negatives = float(weight), int(dim), int(negatives)
        self.nce_temperature, self.momentum = float(nce_temperature), float(momentum)
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.heads: nn.ModuleDict | None = None
        self.num_samples, self.k = 0, 0

    def build(self, seen: Seen) -> None:
        if seen.num_samples < 2:
            raise ValueError("CRD contrasts each image with others of the training split: it needs at least 2 images")
        self.num_samples = seen.num_samples
        self.k = min(self.negatives, seen.num_samples - 1)
        self.heads = nn.ModuleDict(
            {"student": nn.Linear(seen.student_embedding, self.dim), "teacher": nn.Linear(seen.teacher_embedding, self.dim)}
        )
        spread = 1.0 / math.sqrt(self.dim / 3)  # the banks start uniform in [-spread, spread]
        for role in ("student", "teacher"):
            self.register_buffer(f"memory_{role}", (torch.rand(seen.num_samples, self.dim) * 2 - 1) * spread)
        self.register_buffer("normaliser", torch.full((2,), -1.0))  # Z for the student's and teacher's scores; < 0: not yet set
        # The negatives of step s are drawn from (the run's seed, s): a resumed run draws those it would have.
        self.register_buffer("draws", torch.tensor([torch.initial_seed() % 2**31, 0], dtype=torch.long))

    def extra_modules(self) -> list[nn.Module]:
        return [self.heads] if self.heads is not None else []

    def describe(self) -> str | None:
        if self.k < self.negatives:
            return f"CRD: {self.k} negatives an image (the training split has {self.num_samples} images; negatives was {self.negatives})"
        return None

    def draw_negatives(self, index: torch.Tensor) -> torch.Tensor:
        """K training-image indices for each image of the batch, uniform (the positive may recur, as
        in the paper's code); the same for a step of a resumed run as for the run it continues."""
        seed, step = (int(v) for v in self.draws)
        generator = torch.Generator(device=index.device).manual_seed(seed * 1_000_003 + step)
        if self.training:
            self.draws[1] += 1
        return torch.randint(0, self.num_samples, (len(index), self.k), device=index.device, generator=generator)

    def scores(self, v: torch.Tensor, memory: torch.Tensor, rows: torch.Tensor, which: int) -> torch.Tensor:
        """h(v, m) for each image's positive and negatives (``rows``: batch x (1 + K) bank rows)."""
        raw = torch.exp(torch.bmm(memory[rows], v.unsqueeze(2)).squeeze(2) / self.nce_temperature)
        if self.normaliser[which] < 0:  # fixed once, from the first batch (kept in checkpoints)
            self.normaliser[which] = raw.detach().mean() * self.num_samples
        return raw / self.normaliser[which].clone()  # a copy: the buffer changes in place later in the step

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs, inputs=None, *, index: torch.Tensor) -> dict:
        if self.heads is None:
            raise ValueError(
                "CRD's heads and memory banks are built from the shapes they will see: the trainer calls build() first"
            )
        v_s = F.normalize(self.heads["student"](student.embedding.float()), dim=1)
        v_t = F.normalize(self.heads["teacher"](teacher.embedding.float().detach()), dim=1)
        rows = torch.cat([index.unsqueeze(1), self.draw_negatives(index)], dim=1)
        crd = nce_loss(self.scores(v_s, self.memory_teacher, rows, 0), self.num_samples) + nce_loss(
            self.scores(v_t, self.memory_student, rows, 1), self.num_samples
        )
        if self.training:
            with torch.no_grad():
                for memory, v in ((self.memory_student, v_s), (self.memory_teacher, v_t)):
                    memory[index] = F.normalize(self.momentum * memory[index] + (1 - self.momentum) * v.detach(), dim=1)
        loss, terms = with_logit_terms(self.objective, student, targets, teacher, alpha=self.alpha, temperature=self.temperature)
        return {"loss": loss + self.weight * crd, **terms, "crd": crd}
