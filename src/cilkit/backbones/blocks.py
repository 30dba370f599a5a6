"""The building blocks the backbones share: one residual basic block and one weight init."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def init_weights(module: nn.Module) -> None:
    """He (fan-out) normal init of every convolution, BatchNorm at weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ShortcutA(nn.Module):
    """Parameter-free shortcut (He et al.'s option A): subsample with ``stride``, then append
    zero channels."""

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


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU (skippable: LUCIR and PODNet use
    the last block's output before its ReLU).

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution.
        shortcut: ``"A"`` (parameter-free, the CIFAR ResNets) or ``"B"`` (strided 1x1 convolution
            plus BatchNorm, ResNet-18/34) when the shape changes; identity otherwise.
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut: Literal["A", "B"] = "B"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = ShortcutA(stride, planes - in_planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

    def forward(self, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out) if relu else out


def make_stages(
    in_planes: int, widths: tuple[int, ...], blocks: tuple[int, ...], shortcut: Literal["A", "B"]
) -> nn.ModuleList:
    """ResNet stages of :class:`BasicBlock`: stage ``i`` has ``blocks[i]`` blocks of
    ``widths[i]`` channels, the first strided by 2 (except in the first stage)."""
    stages = []
    for i, (planes, n) in enumerate(zip(widths, blocks, strict=True)):
        stage = [BasicBlock(in_planes, planes, 1 if i == 0 else 2, shortcut)]
        stage += [BasicBlock(planes, planes, 1, shortcut) for _ in range(n - 1)]
        stages.append(nn.Sequential(*stage))
        in_planes = planes
    return nn.ModuleList(stages)
