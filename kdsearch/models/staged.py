"""What every kdsearch model is: a stem, stages, global average pooling and a linear head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StagedNet(nn.Module):
    """Subclasses set ``stem``, ``stages`` (an ``nn.ModuleList``) and ``fc``."""

    stem: nn.Module
    stages: nn.ModuleList
    fc: nn.Linear

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the output of every stage, shallow to deep (what Attention Transfer reads)."""
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return logits, features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]
