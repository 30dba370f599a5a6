"""Several experts over one shared trunk (RIDE, Wang et al., ICLR 2021): the stem and the first
stages run once per image, each expert has its own later stages and its own growing classifier,
and an optional router decides per sample how many experts to consult."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.backbones.base import Backbone, FeatureInfo
from cilkit.backbones.blocks import BasicBlock, ShortcutA, init_weights
from cilkit.backbones.heads import CosineLinear
from cilkit.backbones.network import IncrementalNet, SharedBlocks, SpecialisedBlocks
from cilkit.errors import ConfigError

REDUCED_WIDTH = 0.75
"""RIDE's ``reduce_dimension``: expert stages at 3/4 of the backbone's widths (the authors'
ResNet-32 experts have 24 and 48 channels instead of 32 and 64; their ResNet-50 192 and 384)."""


def narrow_stages(backbone: Backbone, at: int, factor: float) -> tuple[nn.ModuleList, list[int]]:
    """Freshly initialised copies of ``backbone``'s basic-block stages from ``at`` on, each
    ``factor`` times as wide (same strides and shortcut kind); returns them and their widths."""
    stages, widths = [], []
    in_planes = backbone.feature_info[at - 1].channels if at else _stem_channels(backbone)
    for stage in list(backbone.stages)[at:]:
        if not all(isinstance(block, BasicBlock) for block in stage):
            raise ConfigError(
                "learner.reduce_dimension: narrower experts need a ResNet of basic blocks "
                "(resnet20/32/56, resnet18); set learner.reduce_dimension=false"
            )
        planes = max(1, round(stage[0].conv2.out_channels * factor))
        blocks = []
        for block in stage:
            kind = "A" if isinstance(block.shortcut, ShortcutA) else "B"
            blocks.append(BasicBlock(in_planes, planes, block.conv1.stride[0], kind))
            in_planes = planes
        stages.append(nn.Sequential(*blocks))
        widths.append(planes)
    out = nn.ModuleList(stages)
    init_weights(out)
    return out, widths


def _stem_channels(backbone: Backbone) -> int:
    convs = [m for m in backbone.stem.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels if convs else backbone.stages[0][0].conv1.in_channels


def make_expert(backbone: Backbone, at: int, reduce: bool) -> SpecialisedBlocks:
    """One expert: ``backbone``'s stages from ``at`` on with its pooling (narrower with
    ``reduce``)."""
    expert = SpecialisedBlocks(backbone, at)
    if reduce:
        expert.stages, widths = narrow_stages(backbone, at, REDUCED_WIDTH)
        expert.out_dim = widths[-1]
        expert.feature_info = [
            FeatureInfo(f.name, w, f.reduction)
            for f, w in zip(backbone.feature_info[at:], widths, strict=True)
        ]
    return expert


class ExpertNet(IncrementalNet):
    """A shared trunk, ``num_experts`` experts and one growing cosine classifier per expert.

    Each expert's logits are ``scale * cos`` (RIDE's ``NormedLinear`` times ``s``); the network's
    logits are their mean. ``forward_features`` concatenates the experts' pooled features (what
    exemplar selection and class means see), ``forward_head`` splits them back.

    Args:
        backbone: the run's backbone; its stem and first ``at`` stages become the trunk.
        build_backbone: builds a fresh backbone of the same kind (every expert is initialised
            independently, as the authors' experts are).
        num_experts: number of experts.
        at: stages in the shared trunk (0: the stem alone).
        reduce: experts at 3/4 of the backbone's widths (:data:`REDUCED_WIDTH`).
        scale: the classifiers' fixed scale ``s``.
    """

    def __init__(
        self,
        backbone: Backbone,
        build_backbone: Callable[[], Backbone],
        num_experts: int,
        at: int,
        reduce: bool,
        scale: float,
    ) -> None:
        nn.Module.__init__(self)
        stages = len(backbone.stages)
        if not 0 <= at < stages:
            raise ConfigError(
                f"learner.shared_stages: the backbone has {stages} stages and every expert needs "
                f"at least the last one: use 0 to {stages - 1}, got {at}"
            )
        self.trunk = SharedBlocks(backbone, at)
        sources = [backbone] + [build_backbone() for _ in range(num_experts - 1)]
        self.experts = nn.ModuleList(make_expert(b, at, reduce) for b in sources)
        width = self.experts[0].out_dim
        self.heads = nn.ModuleList(
            CosineLinear(width, learn_scale=False, scale=scale) for _ in range(num_experts)
        )

    @property
    def backbone(self) -> nn.Module:
        """The shared trunk (what ``engine.compile`` compiles)."""
        return self.trunk

    @property
    def head(self) -> CosineLinear:
        """The first expert's classifier (its class count is every expert's)."""
        return self.heads[0]

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def expert_dim(self) -> int:
        """Width of one expert's features."""
        return int(self.experts[0].out_dim)

    @property
    def feature_dim(self) -> int:
        return self.expert_dim * self.num_experts

    def forward_expert(self, shared: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert ``i``'s pooled features and logits over the trunk's maps ``shared``."""
        features = self.experts[i](shared)
        return features, self.heads[i](features)

    def forward_experts(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every expert's features and their logits stacked ``(num_experts, B, num_classes)``."""
        shared = self.trunk(x)
        outs = [self.forward_expert(shared, i) for i in range(self.num_experts)]
        return [f for f, _ in outs], torch.stack([z for _, z in outs])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.trunk(x)
        return torch.cat([expert(shared) for expert in self.experts], dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        parts = features.split(self.expert_dim, dim=1)
        return torch.stack([h(f) for h, f in zip(self.heads, parts, strict=True)]).mean(0)

    def expand(self, num_new: int) -> None:
        for head in self.heads:
            head.expand(num_new)


class ExpertRouter(nn.Module):
    """RIDE's expert assignment module: before expert ``i + 1``, a score of whether it will
    help, from expert ``i``'s normalised features (a per-expert ReLU layer of ``hidden`` units)
    and the ``top_k`` largest mean logits of the experts so far (a layer shared by all).

    With fewer than ``top_k`` classes the missing top logits are zeros (the input width stays
    fixed while classes are added).
    """

    def __init__(self, num_experts: int, in_features: int, top_k: int, hidden: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.hidden = nn.ModuleList(nn.Linear(in_features, hidden) for _ in range(num_experts - 1))
        self.score = nn.Linear(hidden + top_k, 1)

    def forward(self, features: torch.Tensor, mean_logits: torch.Tensor, i: int) -> torch.Tensor:
        """The logit ``(B,)`` that expert ``i + 1`` is worth consulting."""
        h = F.relu(self.hidden[i](F.normalize(features.float(), dim=1)))
        k = min(self.top_k, mean_logits.shape[1])
        top = mean_logits.float().topk(k, dim=1).values
        top = F.pad(top, (0, self.top_k - k))
        return self.score(torch.cat([top, h], dim=1)).squeeze(1)
