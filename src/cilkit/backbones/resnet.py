"""ResNet-18 and ResNet-34 (He et al., 2016) with basic blocks and 512-d features.

``stem="imagenet"`` is the original 7x7 stride-2 convolution followed by a 3x3 stride-2 max pool
(for 224x224 images); ``stem="cifar"`` is a 3x3 stride-1 convolution without pooling (for 32x32 and
64x64 images, as in PyCIL's ``resnet18`` for CIFAR). Shortcuts that change the shape are a strided
1x1 convolution plus batch norm (option B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.backbones.base import register_backbone
from cilkit.config.schema import BackboneConfig, FieldError


@dataclass(frozen=True)
class ResNetConfig(BackboneConfig):
    """Options of ResNet-18 / ResNet-34."""

    name: str = "resnet18"
    stem: Literal["imagenet", "cifar"] = "imagenet"
    """imagenet: 7x7 stride-2 conv + max pool; cifar: 3x3 stride-1 conv, no pool (small images)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stem not in ("imagenet", "cifar"):
            raise FieldError("stem", f"'{self.stem}' is not imagenet or cifar")


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the (projection) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with basic blocks, four stages of 64/128/256/512 channels and global average pooling.

    Args:
        layers: number of blocks in each of the four stages ((2, 2, 2, 2) for ResNet-18).
        in_channels: image channels.
        stem: ``"imagenet"`` or ``"cifar"`` (see the module docstring).

    Attributes:
        out_dim: feature width, 512.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        in_channels: int = 3,
        stem: Literal["imagenet", "cifar"] = "imagenet",
    ) -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        elif stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            )
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got '{stem}'")
        widths = (64, 128, 256, 512)
        stages = []
        in_planes = 64
        for i, (planes, blocks) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if i == 0 else 2
            stage = [_BasicBlock(in_planes, planes, stride)]
            stage += [_BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = widths[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.pool(x), 1)


def _stem(cfg: BackboneConfig) -> Literal["imagenet", "cifar"]:
    return cfg.stem if isinstance(cfg, ResNetConfig) else "imagenet"


@register_backbone("resnet18", config=ResNetConfig)
def resnet18(cfg: BackboneConfig, in_channels: int) -> nn.Module:
    """ResNet-18 (basic blocks 2-2-2-2, 512-d features, ImageNet or CIFAR stem, 11.2M params)."""
    return ResNet((2, 2, 2, 2), in_channels, _stem(cfg))


@register_backbone("resnet34", config=ResNetConfig)
def resnet34(cfg: BackboneConfig, in_channels: int) -> nn.Module:
    """ResNet-34 (basic blocks 3-4-6-3, 512-d features, ImageNet or CIFAR stem, 21.3M params)."""
    return ResNet((3, 4, 6, 3), in_channels, _stem(cfg))
