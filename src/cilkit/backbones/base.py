"""The backbone registry and its ``create`` verb.

A backbone builder is ``fn(cfg, in_channels) -> nn.Module`` registered with
``@register_backbone("name", config=XConfig)``, where ``XConfig`` is a frozen
:class:`~cilkit.config.schema.BackboneConfig` subclass holding that backbone's options. The first
line of the builder's docstring is its description in ``cilkit list backbones``.

Every backbone maps a float batch ``(B, C, H, W)`` to features ``(B, out_dim)`` and exposes the
feature width as an ``int`` attribute ``out_dim``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from cilkit.config.schema import BackboneConfig
from cilkit.errors import ConfigError
from cilkit.registry import Registry

BackboneBuilder = Callable[[BackboneConfig, int], nn.Module]
"""``fn(cfg, in_channels) -> nn.Module`` with an ``out_dim`` attribute."""

BACKBONES: Registry[BackboneBuilder] = Registry("backbone")
register_backbone = BACKBONES.register


def _as_config(cfg: BackboneConfig, config_cls: type | None) -> BackboneConfig:
    """``cfg`` as an instance of the registered config class (defaults for missing options)."""
    if config_cls is None or isinstance(cfg, config_cls):
        return cfg
    names = {f.name for f in dataclasses.fields(config_cls)}
    kept = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in names}
    return config_cls(**kept)


def create_backbone(cfg: BackboneConfig, in_channels: int) -> nn.Module:
    """Build the backbone named ``cfg.name`` for images with ``in_channels`` channels.

    Args:
        cfg: backbone config; a plain :class:`BackboneConfig` is upgraded to the backbone's own
            config class with default options.
        in_channels: number of image channels (1 for grey-scale, 3 for RGB).

    Returns:
        A module mapping ``(B, in_channels, H, W)`` to ``(B, module.out_dim)``.

    Raises:
        ConfigError: unknown backbone name or an impossible channel count.
    """
    if in_channels < 1:
        raise ConfigError(f"backbone '{cfg.name}': in_channels must be >= 1, got {in_channels}")
    entry = BACKBONES.get(cfg.name)
    module = entry.obj(_as_config(cfg, entry.config_cls), in_channels)
    if not isinstance(getattr(module, "out_dim", None), int):
        raise TypeError(f"backbone '{cfg.name}' has no int attribute 'out_dim'")
    return module
