"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR, as in the KD model zoos (family ``wrn``).

wrn_D_k: a 3x3 stem convolution with 16 channels; three stages of n = (D - 4) / 6 pre-activation blocks
with 16k, 32k, 64k channels (stages 2 and 3 start with stride 2); a final BN + ReLU, global average
pooling and a linear classifier; no dropout. A pre-activation block computes
``conv2(relu(bn2(conv1(relu(bn1(x))))))`` and adds ``x``; where the shape changes the shortcut is a
1x1 convolution of ``relu(bn1(x))`` instead.

Init as in the RepDistiller/CRD zoo: kaiming-normal fan-out for every convolution, BatchNorm weight 1 and
bias 0, classifier bias 0 (weight PyTorch's default). ``forward(x, return_features=True)`` returns the
outputs of the three stages as the zoo's feature list does: the residual sums, before the next BN + ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from kdcore.models.base import Family, FeatureContract, StageSpec

#: name -> (depth, widen factor k)
ARCHITECTURES: dict[str, tuple[int, int]] = {
    "wrn_16_1": (16, 1),
    "wrn_16_2": (16, 2),
    "wrn_40_1": (40, 1),
    "wrn_40_2": (40, 2),
}


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1-conv shortcut (of the pre-activated input)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if in_channels != channels or stride != 1:
            self.shortcut = nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
    first = PreActBlock(in_channels, channels, stride)
    return nn.Sequential(first, *(PreActBlock(channels, channels, 1) for _ in range(blocks - 1)))


class WideResNet(nn.Module):
    """A CIFAR Wide ResNet; see the module docstring. Attributes as every kdcore model (kdcore.models.base)."""

    def __init__(self, arch: str, num_classes: int = 10) -> None:
        super().__init__()
        depth, k = ARCHITECTURES[arch]
        blocks = (depth - 4) // 6
        c1, c2, c3 = 16 * k, 32 * k, 64 * k
        self.arch = arch
        self.width = None
        self.stem = "cifar"
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = _stage(16, c1, blocks, stride=1)
        self.layer2 = _stage(c1, c2, blocks, stride=2)
        self.layer3 = _stage(c2, c3, blocks, stride=2)
        self.bn = nn.BatchNorm2d(c3)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c3, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        nn.init.zeros_(self.fc.bias)
        self.feature_contract = FeatureContract((StageSpec(c1, 1), StageSpec(c2, 2), StageSpec(c3, 4)))
        self.feature_channels: list[int] = self.feature_contract.channels

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``[B, num_classes]``; with ``return_features`` also the three stage outputs."""
        f1 = self.layer1(self.conv1(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        logits = self.fc(torch.flatten(self.avgpool(torch.relu(self.bn(f3))), 1))
        if return_features:
            return logits, [f1, f2, f3]
        return logits

    def extra_repr(self) -> str:
        return f"arch={self.arch}, num_classes={self.num_classes}"


def _build(arch: str, width: int | None, stem: str, num_classes: int) -> WideResNet:
    return WideResNet(arch, num_classes=num_classes)


FAMILY = Family(name="wrn", architectures=tuple(ARCHITECTURES), build=_build)
