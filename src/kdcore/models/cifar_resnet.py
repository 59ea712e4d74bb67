"""The CIFAR ResNets of He et al. (2016) as used across the KD literature (family ``cifar_resnet``).

resnet8/14/20/32/44/56/110: a 3x3 stride-1 stem convolution with 16 channels, BN, ReLU; three stages of
n = (depth - 2) / 6 basic blocks with 16, 32, 64 channels (stages 2 and 3 start with stride 2); global
average pooling and a linear classifier. resnet8x4/resnet32x4 use a 32-channel stem and stages of 64, 128,
256 channels. A block's shortcut is a 1x1 convolution + BN wherever the shape changes, the identity
otherwise. These are the layouts of the RepDistiller/CRD and mdistiller model zoos, and the module names
(``conv1, bn1, layer1..3, fc``; blocks ``conv1, bn1, conv2, bn2, downsample``) match theirs, so their
state dicts load. The blocks are torchvision's ``BasicBlock``.

Init as there: kaiming-normal fan-out for every convolution, BatchNorm weight 1 and bias 0, PyTorch's
default for ``fc``. ``forward(x, return_features=True)`` returns the outputs of layer1..layer3 (after
the block's final ReLU), at 32, 16 and 8 pixels for a 32x32 input.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

from kdcore.models.base import Family, FeatureContract, StageSpec

#: name -> (depth, (stem channels, stage1, stage2, stage3 channels))
ARCHITECTURES: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    **{f"resnet{d}": (d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` basic blocks; the first one changes stride/channels and gets a 1x1-conv+BN shortcut if needed."""
    shortcut = None
    if stride != 1 or in_channels != channels:
        shortcut = nn.Sequential(conv1x1(in_channels, channels, stride), nn.BatchNorm2d(channels))
    first = BasicBlock(in_channels, channels, stride, shortcut)
    return nn.Sequential(first, *(BasicBlock(channels, channels) for _ in range(blocks - 1)))


class CifarResNet(nn.Module):
    """A CIFAR ResNet; see the module docstring. Attributes as every kdcore model (see kdcore.models.base)."""

    def __init__(self, arch: str, num_classes: int = 10) -> None:
        super().__init__()
        depth, (stem, c1, c2, c3) = ARCHITECTURES[arch]
        blocks = (depth - 2) // 6
        self.arch = arch
        self.width = None
        self.stem = "cifar"
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(stem, c1, blocks, stride=1)
        self.layer2 = _stage(c1, c2, blocks, stride=2)
        self.layer3 = _stage(c2, c3, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c3, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        self.feature_contract = FeatureContract((StageSpec(c1, 1), StageSpec(c2, 2), StageSpec(c3, 4)))
        self.feature_channels: list[int] = self.feature_contract.channels

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``[B, num_classes]``; with ``return_features`` also ``[layer1, layer2, layer3]`` outputs."""
        x = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        logits = self.fc(torch.flatten(self.avgpool(f3), 1))
        if return_features:
            return logits, [f1, f2, f3]
        return logits

    def extra_repr(self) -> str:
        return f"arch={self.arch}, num_classes={self.num_classes}"


def _build(arch: str, width: int | None, stem: str, num_classes: int) -> CifarResNet:
    return CifarResNet(arch, num_classes=num_classes)


FAMILY = Family(name="cifar_resnet", architectures=tuple(ARCHITECTURES), build=_build)
