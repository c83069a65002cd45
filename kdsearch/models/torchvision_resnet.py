"""ResNet-18/34/50 from torchvision, with a CIFAR stem option and any number of input channels.

The CIFAR stem (a 3x3 convolution with stride 1 and no max-pool) keeps 32x32 inputs at
32x32 through the first stage, which is what makes ResNet-18 reach 93-95% on CIFAR-10;
the ImageNet stem (7x7 stride 2 and max-pool) is for larger images such as CelebA.
"""

from __future__ import annotations

from torch import nn

from kdsearch.models.staged import StagedNet

ARCHS = ("resnet18", "resnet34", "resnet50")


class TorchvisionResNet(StagedNet):
    def __init__(self, arch: str, num_classes: int, in_channels: int = 3, stem: str = "cifar", width: float = 1.0):
        super().__init__()
        if width != 1.0:
            raise ValueError(f"{arch} has a fixed width; width must be 1.0, got {width}")
        # Imported here: torchvision.models costs ~1 s to import, paid by every CLI command and
        # every Ray trial process otherwise, and most runs use the small CIFAR ResNets.
        from torchvision import models as tv_models  # only when a torchvision model is built

        if arch not in ARCHS:
            raise ValueError(f"unknown torchvision ResNet {arch!r}: choose one of {', '.join(ARCHS)}")
        net = getattr(tv_models, arch)(weights=None, num_classes=num_classes)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif stem == "imagenet":
            if in_channels != 3:
                net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.fc = net.fc
