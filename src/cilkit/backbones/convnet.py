"""The 4-block convolutional feature extractor of prototypical networks (Snell et al., 2017).

Each block is conv3x3 -> batch norm -> ReLU -> 2x2 max pool. Pooling uses ``ceil_mode`` and is
skipped once the feature map is 1x1, so the network also runs on 8x8 images (sklearn digits);
global average pooling then gives ``hidden``-d features for any input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cilkit.backbones.base import Backbone, FeatureInfo, register_backbone
from cilkit.backbones.blocks import init_weights
from cilkit.config.schema import BackboneConfig, FieldError


@dataclass(frozen=True)
class ConvNetConfig(BackboneConfig):
    """Options of the 4-block ConvNet."""

    name: str = "convnet4"
    hidden: int = 64
    """Channels of every block, which is also the feature width."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden < 1:
            raise FieldError("hidden", "must be >= 1")


class _ConvBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> MaxPool2d(2, ceil_mode=True), the pool skipped on 1x1 maps."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if relu:
            x = torch.relu(x)
        if x.shape[-2] > 1 or x.shape[-1] > 1:
            x = self.pool(x)
        return x


class ConvNet(Backbone):
    """``blocks`` conv blocks (four by default) followed by global average pooling; each block
    is one stage.

    Args:
        in_channels: image channels.
        hidden: channels of every block.
        blocks: number of blocks.

    Attributes:
        out_dim: feature width, ``hidden``.
    """

    def __init__(self, in_channels: int = 3, hidden: int = 64, blocks: int = 4) -> None:
        super().__init__()
        channels = [in_channels] + [hidden] * blocks
        self.stem = nn.Identity()
        self.stages = nn.ModuleList(
            nn.Sequential(_ConvBlock(c_in, c_out))
            for c_in, c_out in zip(channels, channels[1:], strict=False)
        )
        self.out_dim = hidden
        self.feature_info = [
            FeatureInfo(f"stages.{i}", hidden, 2 ** (i + 1)) for i in range(blocks)
        ]
        init_weights(self)


@register_backbone("convnet4", config=ConvNetConfig)
def convnet4(cfg: BackboneConfig, in_channels: int) -> Backbone:
    """4-block ConvNet of prototypical networks (64-d features, any input size from 8x8 up)."""
    hidden = cfg.hidden if isinstance(cfg, ConvNetConfig) else ConvNetConfig.hidden
    return ConvNet(in_channels, hidden)
