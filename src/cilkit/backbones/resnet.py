"""ResNet-18 and ResNet-34 (He et al., 2016) with basic blocks and 512-d features.

``stem="imagenet"`` is the original 7x7 stride-2 convolution followed by a 3x3 stride-2 max pool
(for 224x224 images); ``stem="cifar"`` is a 3x3 stride-1 convolution without pooling (for 32x32 and
64x64 images, as in PyCIL's ``resnet18`` for CIFAR). Shortcuts that change the shape are a strided
1x1 convolution plus batch norm (option B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from cilkit.backbones.base import Backbone, FeatureInfo, register_backbone
from cilkit.backbones.blocks import init_weights, make_stages
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


class ResNet(Backbone):
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
        self.stages = make_stages(64, widths, layers, shortcut="B")
        self.out_dim = widths[-1]
        first = 4 if stem == "imagenet" else 1
        self.feature_info = [
            FeatureInfo(f"stages.{i}", c, first * 2**i) for i, c in enumerate(widths)
        ]
        init_weights(self)


def _stem(cfg: BackboneConfig) -> Literal["imagenet", "cifar"]:
    return cfg.stem if isinstance(cfg, ResNetConfig) else "imagenet"


@register_backbone("resnet18", config=ResNetConfig)
def resnet18(cfg: BackboneConfig, in_channels: int) -> Backbone:
    """ResNet-18 (basic blocks 2-2-2-2, 512-d features, ImageNet or CIFAR stem, 11.2M params)."""
    return ResNet((2, 2, 2, 2), in_channels, _stem(cfg))


@register_backbone("resnet34", config=ResNetConfig)
def resnet34(cfg: BackboneConfig, in_channels: int) -> Backbone:
    """ResNet-34 (basic blocks 3-4-6-3, 512-d features, ImageNet or CIFAR stem, 21.3M params)."""
    return ResNet((3, 4, 6, 3), in_channels, _stem(cfg))
