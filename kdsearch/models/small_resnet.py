"""CIFAR-style ResNets of depth 6n+2 (He et al. 2016, section 4.2): resnet8/20/56.

Three stages of n basic blocks at 16, 32 and 64 channels (times ``width``), a 3x3 stem
with stride 1, global average pooling. These are the CPU-scale students and teachers.
Shortcuts that change shape use a 1x1 convolution with batch norm ("option B").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.models.staged import StagedNet


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(StagedNet):
    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        planes = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(planes[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_planes = planes[0]
        for i, p in enumerate(planes):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(in_planes, p, stride=2 if (i > 0 and b == 0) else 1))
                in_planes = p
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
