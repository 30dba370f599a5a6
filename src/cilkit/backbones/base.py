"""The backbone registry and its ``create`` verb.

A backbone builder is ``fn(cfg, in_channels) -> nn.Module`` registered with
``@register_backbone("name", config=XConfig)``, where ``XConfig`` is a frozen
:class:`~cilkit.config.schema.BackboneConfig` subclass holding that backbone's options. The first
line of the builder's docstring is its description in ``cilkit list backbones``.

Every backbone is a :class:`Backbone`: a stem, an ordered list of stages and global average
pooling. It maps a float batch ``(B, C, H, W)`` to features ``(B, out_dim)`` and makes every
stage's feature map addressable, timm-style: :meth:`Backbone.forward_intermediates` returns the
pooled features and each stage's map, ``feature_info`` gives each stage's channels and reduction,
and the last block's output can be taken before its ReLU (LUCIR, PODNet).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cilkit.config.schema import BackboneConfig
from cilkit.errors import ConfigError
from cilkit.registry import Registry


@dataclass(frozen=True)
class FeatureInfo:
    """One stage's output: its module name, channels and spatial reduction (input side / map
    side, rounded up)."""

    name: str
    channels: int
    reduction: int


class Backbone(nn.Module):
    """A stem, stages of blocks and global average pooling, with addressable stage outputs.

    Subclasses build ``self.stem`` (a module) and ``self.stages`` (an ``nn.ModuleList`` of
    ``nn.Sequential`` of blocks whose ``forward(x, relu=True)`` can skip the final ReLU) and set
    ``out_dim`` and ``feature_info``.

    Attributes:
        out_dim: width of the pooled features.
        feature_info: one :class:`FeatureInfo` per stage, in order.
        last_relu: whether the last block ends with its ReLU; False makes :meth:`forward` (and
            by default :meth:`forward_intermediates`) return features that can be negative, as
            LUCIR's cosine classifier and PODNet's distillation use them.
    """

    stem: nn.Module
    stages: nn.ModuleList
    out_dim: int
    feature_info: list[FeatureInfo]

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.last_relu = True

    def forward_intermediates(
        self, x: torch.Tensor, last_relu: bool | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The pooled features ``(B, out_dim)`` and each stage's output map, in order.

        Args:
            x: images ``(B, C, H, W)``.
            last_relu: end the last block with its ReLU; None = ``self.last_relu``.
        """
        relu = self.last_relu if last_relu is None else last_relu
        x = self.stem(x)
        maps = []
        for i, stage in enumerate(self.stages):
            final_stage = i == len(self.stages) - 1
            for j, block in enumerate(stage):
                x = block(x, relu=relu or not (final_stage and j == len(stage) - 1))
            maps.append(x)
        return torch.flatten(self.pool(x), 1), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[0]


BackboneBuilder = Callable[[BackboneConfig, int], Backbone]
"""``fn(cfg, in_channels) -> Backbone``."""

BACKBONES: Registry[BackboneBuilder] = Registry("backbone")
register_backbone = BACKBONES.register


def _as_config(cfg: BackboneConfig, config_cls: type | None) -> BackboneConfig:
    """``cfg`` as an instance of the registered config class (defaults for missing options)."""
    if config_cls is None or isinstance(cfg, config_cls):
        return cfg
    names = {f.name for f in dataclasses.fields(config_cls)}
    kept = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in names}
    return config_cls(**kept)


def create_backbone(cfg: BackboneConfig, in_channels: int) -> Backbone:
    """Build the backbone named ``cfg.name`` for images with ``in_channels`` channels.

    Args:
        cfg: backbone config; a plain :class:`BackboneConfig` is upgraded to the backbone's own
            config class with default options.
        in_channels: number of image channels (1 for grey-scale, 3 for RGB).

    Returns:
        A :class:`Backbone` mapping ``(B, in_channels, H, W)`` to ``(B, module.out_dim)``.

    Raises:
        ConfigError: unknown backbone name or an impossible channel count.
    """
    if in_channels < 1:
        raise ConfigError(f"backbone '{cfg.name}': in_channels must be >= 1, got {in_channels}")
    entry = BACKBONES.get(cfg.name)
    module = entry.obj(_as_config(cfg, entry.config_cls), in_channels)
    if not isinstance(module, Backbone) or not isinstance(getattr(module, "out_dim", None), int):
        raise TypeError(f"backbone '{cfg.name}' is not a Backbone with an int 'out_dim'")
    return module
