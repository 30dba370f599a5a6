"""A backbone plus a growing classifier head: the network every learner trains."""

from __future__ import annotations

import copy

import torch
from torch import nn

from cilkit.backbones.base import create_backbone
from cilkit.backbones.heads import CosineLinear, ExpandableLinear
from cilkit.config.schema import BackboneConfig
from cilkit.errors import ConfigError


class IncrementalNet(nn.Module):
    """``head(backbone(x))`` where the head grows by whole classes.

    Args:
        backbone: module mapping ``(B, C, H, W)`` to ``(B, backbone.out_dim)``.
        head: classifier over the features with ``expand(num_new)`` and ``num_classes``
            (:class:`ExpandableLinear` or :class:`CosineLinear`).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def feature_dim(self) -> int:
        """Width of the backbone's features."""
        return int(self.backbone.out_dim)

    @property
    def num_classes(self) -> int:
        """Number of classes the head currently outputs."""
        return int(self.head.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``(B, feature_dim)`` of images ``(B, C, H, W)``."""
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of features ``(B, feature_dim)``."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        return self.forward_head(self.forward_features(x))

    def expand(self, num_new: int) -> None:
        """Add ``num_new`` classes to the head (old classes' weights are kept exactly).

        Parameters of the head are replaced, so rebuild any optimiser afterwards.
        """
        self.head.expand(num_new)

    def copy_frozen(self) -> IncrementalNet:
        """An independent deep copy in eval mode with gradients off (the old model to distil)."""
        old = copy.deepcopy(self)
        old.eval()
        old.requires_grad_(False)
        return old


def create_network(
    cfg: BackboneConfig, in_channels: int, head: str | None = None
) -> IncrementalNet:
    """Build the backbone named ``cfg.name`` with an empty expandable head.

    Args:
        cfg: backbone config.
        in_channels: image channels.
        head: ``"linear"`` (:class:`ExpandableLinear`) or ``"cosine"`` (:class:`CosineLinear`);
            None = ``cfg.head``.

    Returns:
        An :class:`IncrementalNet` with 0 classes; call :meth:`IncrementalNet.expand` per task.
    """
    backbone = create_backbone(cfg, in_channels)
    head = head or cfg.head
    classifier: nn.Module
    if head == "linear":
        classifier = ExpandableLinear(backbone.out_dim)
    elif head == "cosine":
        classifier = CosineLinear(backbone.out_dim, cfg.learn_cosine_scale, cfg.cosine_scale)
    else:
        raise ConfigError(f"unknown head '{head}'; known: cosine, linear")
    return IncrementalNet(backbone, classifier)
