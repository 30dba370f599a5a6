"""The CIFAR ResNets of He et al. (2016, section 4.2) as used by iCaRL and PyCIL.

A 3x3 stem with 16 channels, three stages of ``n`` basic blocks with 16, 32 and 64 channels
(stride 2 at the start of stages 2 and 3) and global average pooling: depth ``6n + 2``. Shortcuts
that change the shape are option A: a stride-2 subsample followed by zero channels, so they have no
parameters (resnet32: about 0.46M parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cilkit.backbones.base import Backbone, FeatureInfo, register_backbone
from cilkit.backbones.blocks import init_weights, make_stages
from cilkit.config.schema import BackboneConfig


@dataclass(frozen=True)
class CifarResNetConfig(BackboneConfig):
    """Options of the CIFAR ResNets (the depth is given by the name)."""

    name: str = "resnet32"


class CifarResNet(Backbone):
    """CIFAR ResNet of depth ``6n + 2`` with option-A shortcuts.

    Args:
        depth: total depth; ``depth - 2`` must be a multiple of 6 (20, 32, 44, 56, 110, ...).
        in_channels: image channels.
        width: channels of the first stage (the later stages have 2x and 4x as many).

    Attributes:
        out_dim: feature width, ``4 * width``.
    """

    def __init__(self, depth: int = 32, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        blocks = (depth - 2) // 6
        self.depth = depth
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        widths = (width, 2 * width, 4 * width)
        self.stages = make_stages(width, widths, (blocks,) * 3, shortcut="A")
        self.out_dim = widths[-1]
        self.feature_info = [FeatureInfo(f"stages.{i}", c, 2**i) for i, c in enumerate(widths)]
        init_weights(self)


@register_backbone("resnet20", config=CifarResNetConfig)
def resnet20(cfg: BackboneConfig, in_channels: int) -> Backbone:
    """CIFAR ResNet-20 (3 blocks per stage, option-A shortcuts, 64-d features, 0.27M params)."""
    return CifarResNet(20, in_channels)


@register_backbone("resnet32", config=CifarResNetConfig)
def resnet32(cfg: BackboneConfig, in_channels: int) -> Backbone:
    """CIFAR ResNet-32 of iCaRL / PyCIL (5 blocks per stage, 64-d features, 0.46M params)."""
    return CifarResNet(32, in_channels)


@register_backbone("resnet56", config=CifarResNetConfig)
def resnet56(cfg: BackboneConfig, in_channels: int) -> Backbone:
    """CIFAR ResNet-56 (9 blocks per stage, option-A shortcuts, 64-d features, 0.85M params)."""
    return CifarResNet(56, in_channels)
