"""The CIFAR ResNets of He et al. (2016, section 4.2) as used by iCaRL and PyCIL.

A 3x3 stem with 16 channels, three stages of ``n`` basic blocks with 16, 32 and 64 channels
(stride 2 at the start of stages 2 and 3) and global average pooling: depth ``6n + 2``. Shortcuts
that change the shape are option A: a stride-2 subsample followed by zero channels, so they have no
parameters (resnet32: about 0.46M parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.backbones.base import register_backbone
from cilkit.config.schema import BackboneConfig


@dataclass(frozen=True)
class CifarResNetConfig(BackboneConfig):
    """Options of the CIFAR ResNets (the depth is given by the name)."""

    name: str = "resnet32"


class _ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample with ``stride``, then append zero channels."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(stride, planes - in_planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
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
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.stage1 = self._stage(width, width, blocks, stride=1)
        self.stage2 = self._stage(width, 2 * width, blocks, stride=2)
        self.stage3 = self._stage(2 * width, 4 * width, blocks, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 4 * width
        self._init_weights()

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [_BasicBlock(in_planes, planes, stride)]
        layers += [_BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return torch.flatten(self.pool(x), 1)


@register_backbone("resnet20", config=CifarResNetConfig)
def resnet20(cfg: BackboneConfig, in_channels: int) -> nn.Module:
    """CIFAR ResNet-20 (3 blocks per stage, option-A shortcuts, 64-d features, 0.27M params)."""
    return CifarResNet(20, in_channels)


@register_backbone("resnet32", config=CifarResNetConfig)
def resnet32(cfg: BackboneConfig, in_channels: int) -> nn.Module:
    """CIFAR ResNet-32 of iCaRL / PyCIL (5 blocks per stage, 64-d features, 0.46M params)."""
    return CifarResNet(32, in_channels)


@register_backbone("resnet56", config=CifarResNetConfig)
def resnet56(cfg: BackboneConfig, in_channels: int) -> nn.Module:
    """CIFAR ResNet-56 (9 blocks per stage, option-A shortcuts, 64-d features, 0.85M params)."""
    return CifarResNet(56, in_channels)
