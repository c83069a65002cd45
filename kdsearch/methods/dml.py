"""Deep Mutual Learning.

Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018. A cohort of peers
learns together from scratch; each minimises its own CE plus the mean KL from every
other peer's (fixed) prediction to its own. The first peer is the student that is
reported; the others are built from the same architecture and live inside this module,
so the optimiser trains them along with the student. A pretrained teacher may join the
cohort frozen (``use_teacher``): it teaches every peer but learns nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from kdsearch.methods.base import Method, Reads
from kdsearch.methods.task_loss import Outputs, TaskLoss


class DeepMutualLearning(Method):
    def __init__(
        self,
        num_peers: int = 2,
        temperature: float = 1.0,
        weight: float = 1.0,
        use_teacher: bool = False,
        *,
        objective: TaskLoss,
        make_peer: Callable[[], nn.Module],
    ):
        super().__init__(objective=objective)
        if int(num_peers) != num_peers or num_peers < 2:
            raise ValueError(f"num_peers must be an integer >= 2 (the student and at least one peer), got {num_peers}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.temperature, self.weight = float(temperature), float(weight)
        self.reads = self.reads_for({"use_teacher": use_teacher})
        self.peers = nn.ModuleList(make_peer() for _ in range(int(num_peers) - 1))

    @classmethod
    def reads_for(cls, settings: Mapping[str, object]) -> Reads:
        return Reads(teacher={"logits"}) if settings.get("use_teacher", False) else Reads()

    def extra_modules(self) -> list[nn.Module]:
        return list(self.peers)

    def mutual_losses(
        self, logits: list[torch.Tensor], targets: torch.Tensor, frozen: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(CE, mean KL to the others) for each learner; the others' predictions are constants."""
        out = []
        for i, own in enumerate(logits):
            others = [o.detach() for j, o in enumerate(logits) if j != i] + frozen
            mutual = sum(self.objective.soft(own, o, self.temperature) for o in others) / len(others)
            out.append((self.objective.hard(own, targets), mutual))
        return out

    def forward(self, student: Outputs, targets: torch.Tensor, teacher: Outputs | None, inputs: torch.Tensor) -> dict:
        logits = [student.logits] + [peer(inputs) for peer in self.peers]
        frozen = [teacher.logits.detach()] if self.needs_teacher else []
        losses = self.mutual_losses(logits, targets, frozen)
        per_learner = [ce + self.weight * kl for ce, kl in losses]
        ce, mutual = losses[0]
        return {"loss": sum(per_learner), "ce": ce, "mutual": mutual, "peers": sum(per_learner[1:]).detach()}
