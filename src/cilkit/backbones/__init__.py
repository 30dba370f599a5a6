"""Feature extractors (``cilkit list backbones``), growing heads and the incremental network."""

from cilkit.backbones import convnet, resnet, resnet_cifar  # noqa: F401  (registration)
from cilkit.backbones.base import BACKBONES, create_backbone, register_backbone
from cilkit.backbones.heads import CosineLinear, ExpandableLinear
from cilkit.backbones.network import IncrementalNet, create_network

__all__ = [
    "BACKBONES",
    "CosineLinear",
    "ExpandableLinear",
    "IncrementalNet",
    "create_backbone",
    "create_network",
    "register_backbone",
]
