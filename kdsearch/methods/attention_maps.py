"""Feature maps as distillation methods read them: attention maps (Attention Transfer).

Shared by the method that trains on them (``methods.at``) and by the precomputed teacher
outputs (``teacher_outputs``), so both compute exactly the same thing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): mean over channels of |f|^p, before normalisation."""
    return features.float().abs().pow(p).mean(dim=1)


def normalised_attention(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """The attention map scaled to unit L2 norm per image, kept as (N, H, W)."""
    m = attention_map(features, p)
    return F.normalize(m.flatten(1), dim=1).view_as(m)
