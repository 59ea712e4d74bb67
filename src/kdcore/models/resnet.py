"""ResNet-18/34/50/101 for 32x32 images, built from torchvision's own blocks (family ``resnet``).

``KDResNet`` subclasses ``torchvision.models.resnet.ResNet`` and

* reuses torchvision's ``BasicBlock``/``Bottleneck`` and ``ResNet._make_layer`` unchanged, so at
  ``width=64`` the network is torchvision's ``resnetXX(num_classes=...)`` module for module (same
  ``state_dict`` keys and shapes, same construction order, same initialisation:
  ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` for every convolution, BatchNorm weight 1 and
  bias 0, PyTorch's default init for the final ``fc``);
* scales the base width (channels of the stem and of layer1; layer2..4 use 2x, 4x, 8x that) so that
  widths 8/16/32 give CPU-sized networks of the same depth and topology;
* uses the CIFAR stem by default: a 3x3 stride-1 padding-1 convolution and no max-pool
  (``maxpool`` is an ``nn.Identity`` so the module names match torchvision). ``stem="imagenet"`` keeps
  torchvision's 7x7 stride-2 convolution and 3x3 stride-2 max-pool;
* returns the outputs of layer1..layer4 from ``forward(x, return_features=True)`` without forward
  hooks, so it works under ``torch.compile`` and with channels_last inputs.

CIFAR stem initialisation: the paper's code builds torchvision's model and then *replaces* ``conv1``
with a fresh 3x3 ``nn.Conv2d``, which keeps PyTorch's default init (kaiming-uniform, a=sqrt(5)). The
CIFAR stem here is made the same way: the network is built with torchvision's 7x7 ``conv1`` and
initialised, then ``conv1`` is replaced by a fresh 3x3 convolution. The random stream is therefore
consumed exactly as in the paper's code, and at width 64 the same seed gives the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from kdcore.models.base import Family, FeatureContract, StageSpec


@dataclass(frozen=True)
class ArchSpec:
    """Depth of one ResNet variant: its block type and the number of blocks in layer1..layer4."""

    block: type[BasicBlock | Bottleneck]
    layers: tuple[int, int, int, int]


#: The ResNets of this family, name -> block type and blocks per stage (as in torchvision).
ARCHITECTURES: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(BasicBlock, (2, 2, 2, 2)),
    "resnet34": ArchSpec(BasicBlock, (3, 4, 6, 3)),
    "resnet50": ArchSpec(Bottleneck, (3, 4, 6, 3)),
    "resnet101": ArchSpec(Bottleneck, (3, 4, 23, 3)),
}

#: The stems this family offers (the first is the default).
STEMS: tuple[str, ...] = ("cifar", "imagenet")


class KDResNet(ResNet):
    """A torchvision ResNet with a scalable base width, a CIFAR or ImageNet stem and feature outputs.

    Attributes: ``arch`` (e.g. ``"resnet18"``), ``width`` (base width, 64 = torchvision),
    ``stem`` (``"cifar"`` or ``"imagenet"``), ``num_classes``, ``feature_contract`` and
    ``feature_channels`` (channels of the layer1..layer4 outputs). Arguments are checked by
    :func:`kdcore.models.build_model`.
    """

    def __init__(self, arch: str, width: int = 64, stem: str = "cifar", num_classes: int = 10) -> None:
        spec = ARCHITECTURES[arch]
        block = spec.block
        # ResNet.__init__ hard-codes width 64, so it is not called; the attributes that torchvision's
        # _make_layer reads are set here and the modules are created in torchvision's order.
        nn.Module.__init__(self)
        self.arch = arch
        self.width = width
        self.stem = stem
        self.num_classes = num_classes
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # torchvision's width_per_group; Bottleneck width = planes * base_width/64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, spec.layers[0])
        self.layer2 = self._make_layer(block, 2 * width, spec.layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, spec.layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, spec.layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if stem == "cifar":
            # replaced after the init loop, as in the paper's code: PyTorch's default conv init
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()

        first_stride = 1 if stem == "cifar" else 4
        self.feature_contract = FeatureContract(
            tuple(StageSpec(m * width * block.expansion, first_stride * m) for m in (1, 2, 4, 8))
        )
        self.feature_channels: list[int] = self.feature_contract.channels

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``[B, num_classes]``; with ``return_features`` also ``[layer1, ..., layer4]`` outputs."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        logits = self.fc(torch.flatten(self.avgpool(f4), 1))
        if return_features:
            return logits, [f1, f2, f3, f4]
        return logits

    def extra_repr(self) -> str:
        return f"arch={self.arch}, width={self.width}, stem={self.stem}, num_classes={self.num_classes}"


def _build(arch: str, width: int | None, stem: str, num_classes: int) -> KDResNet:
    assert width is not None
    return KDResNet(arch, width=width, stem=stem, num_classes=num_classes)


FAMILY = Family(name="resnet", architectures=tuple(ARCHITECTURES), build=_build, stems=STEMS, default_width=64)
