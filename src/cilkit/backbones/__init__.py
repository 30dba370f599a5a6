"""Feature extractors (``cilkit list backbones``), growing heads and the incremental network."""

from cilkit.backbones import (  # noqa: F401  (registration)
    convnet,
    resnet,
    resnet_cifar,
    timm_backbone,
)
from cilkit.backbones.base import (
    BACKBONES,
    Backbone,
    FeatureInfo,
    create_backbone,
    register_backbone,
)
from cilkit.backbones.heads import (
    HEADS,
    CosineLinear,
    ExpandableLinear,
    Head,
    LocalSimilarity,
    create_head,
    register_head,
)
from cilkit.backbones.network import (
    BranchedNet,
    Frozen,
    IncrementalNet,
    create_network,
    is_compiled,
    unfrozen,
)

__all__ = [
    "BACKBONES",
    "HEADS",
    "Backbone",
    "BranchedNet",
    "CosineLinear",
    "ExpandableLinear",
    "FeatureInfo",
    "Frozen",
    "Head",
    "IncrementalNet",
    "LocalSimilarity",
    "create_backbone",
    "create_head",
    "create_network",
    "is_compiled",
    "register_backbone",
    "register_head",
    "unfrozen",
]
