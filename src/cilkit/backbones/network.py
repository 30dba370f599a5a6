"""The networks learners train: a backbone plus a growing head, or several backbones side by side
(DER), and the frozen wrapper that keeps a teacher or an old extractor in eval mode."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cilkit.backbones.base import Backbone, create_backbone
from cilkit.backbones.heads import Head, create_head
from cilkit.config.schema import BackboneConfig


class Frozen(nn.Module):
    """A module kept in eval mode with gradients off, whatever mode its parents are put in.

    ``learner.train()`` reaches every submodule; a frozen teacher (iCaRL's old network), DER's
    previous extractors or MEMO's shared blocks must still normalise with their running
    statistics and never update them, so the freezing is part of the structure: this wrapper's
    ``train`` ignores its argument. Attribute access falls through to the wrapped module.

    Args:
        module: the module to freeze (its parameters get ``requires_grad=False``).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.requires_grad_(False).eval()
        self.training = False

    def train(self, mode: bool = True) -> Frozen:
        """Stay in eval mode (``mode`` is ignored)."""
        self.training = False
        self.module.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


class IncrementalNet(nn.Module):
    """``head(backbone(x))`` where the head grows by whole classes.

    Args:
        backbone: a :class:`Backbone` mapping ``(B, C, H, W)`` to ``(B, backbone.out_dim)``.
        head: a :class:`Head` over the features.
    """

    def __init__(self, backbone: Backbone, head: Head) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def feature_dim(self) -> int:
        """Width of the features the head sees."""
        return int(self.backbone.out_dim)

    @property
    def num_classes(self) -> int:
        """Number of classes the head currently outputs."""
        return int(self.head.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(B, feature_dim)`` of images ``(B, C, H, W)``."""
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

    def copy_frozen(self) -> Frozen:
        """An independent copy, frozen (the old model to distil from)."""
        return Frozen(copy.deepcopy(self))


class SharedBlocks(nn.Module):
    """The stem and the first ``at`` stages of a backbone, run once for every branch (MEMO's
    generalised blocks)."""

    def __init__(self, backbone: Backbone, at: int) -> None:
        super().__init__()
        self.stem = backbone.stem
        self.stages = nn.ModuleList(list(backbone.stages)[:at])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


class SpecialisedBlocks(Backbone):
    """The stages of a backbone from stage ``at`` on, with its pooling: a branch over the maps
    of :class:`SharedBlocks` (MEMO's specialised blocks). Keeps the backbone's ``last_relu``."""

    def __init__(self, backbone: Backbone, at: int) -> None:
        super().__init__()
        self.stem = nn.Identity()
        self.stages = nn.ModuleList(list(backbone.stages)[at:])
        self.out_dim = backbone.out_dim
        self.feature_info = backbone.feature_info[at:]
        self.last_relu = backbone.last_relu


def split_backbone(backbone: Backbone, at: int) -> tuple[SharedBlocks, SpecialisedBlocks]:
    """``backbone`` cut before stage ``at`` (0 < at < number of stages); the parts share its
    modules."""
    if not 0 < at < len(backbone.stages):
        raise ValueError(f"cannot split a backbone of {len(backbone.stages)} stages at {at}")
    parts = SharedBlocks(backbone, at), SpecialisedBlocks(backbone, at)
    if is_compiled(backbone):  # the parts run instead of it: compile them (engine.compile)
        for part in parts:
            part.compile()
    return parts


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module.compile()`` was called (``engine.compile``)."""
    return getattr(module, "_compiled_call_impl", None) is not None


class BranchedNet(IncrementalNet):
    """Several feature extractors side by side, their features concatenated, one head over all
    (DER's super-feature extractor, Yan et al. 2021), optionally after a shared trunk (MEMO).

    ``add_branch`` builds a new extractor (a copy of the newest one, as DER's code starts it),
    freezes every earlier one (:class:`Frozen`) and widens the head; ``freeze_trunk`` freezes the
    shared trunk. The number of branches and which parts are frozen are read from a state
    dict's keys when it is loaded, so a checkpoint loads into a freshly built network.

    Args:
        backbone: the first extractor (over images, or over the trunk's maps).
        head: the head over the concatenated features.
        build_backbone: builds a fresh extractor of the same kind.
        trunk: blocks every branch shares, run once per image (None: the branches see images).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: Head,
        build_backbone: Callable[[], nn.Module],
        trunk: nn.Module | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.trunk = trunk if trunk is not None else nn.Identity()
        self.branches = nn.ModuleList([backbone])
        self.head = head
        self._build_backbone = build_backbone

    @property
    def backbone(self) -> nn.Module:
        """The newest extractor (the one being trained)."""
        return self.branches[-1]

    @property
    def out_dim(self) -> int:
        """Width of one extractor's features."""
        return int(self.branches[0].out_dim)

    @property
    def feature_dim(self) -> int:
        return self.out_dim * len(self.branches)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.trunk(x)
        return torch.cat([branch(shared) for branch in self.branches], dim=1)

    def freeze_trunk(self) -> None:
        """Keep the shared trunk fixed and in eval mode from now on."""
        if not isinstance(self.trunk, Frozen):
            self.trunk = Frozen(self.trunk)

    def add_branch(self) -> None:
        """Freeze every extractor, add a new one initialised from the newest, widen the head."""
        newest = self.branches[-1]
        fresh = self._build_backbone()
        fresh.load_state_dict(unfrozen(newest).state_dict())
        fresh.to(next(newest.parameters()).device)
        for i, branch in enumerate(self.branches):
            if not isinstance(branch, Frozen):
                self.branches[i] = Frozen(branch)
        self.branches.append(fresh)
        self.head.expand_inputs(self.out_dim)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        pattern = re.compile(re.escape(prefix) + r"branches\.(\d+)\.(module\.)?")
        found: dict[int, bool] = {}
        for key in state_dict:
            match = pattern.match(key)
            if match:
                found[int(match.group(1))] = match.group(2) is not None
        if any(key.startswith(prefix + "trunk.module.") for key in state_dict):
            self.freeze_trunk()
        for i in range(len(found)):
            if i >= len(self.branches):
                device = next(self.branches[0].parameters()).device
                self.branches.append(self._build_backbone().to(device))
            if found.get(i) and not isinstance(self.branches[i], Frozen):
                self.branches[i] = Frozen(self.branches[i])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def unfrozen(module: nn.Module) -> nn.Module:
    """The module itself, or the module a :class:`Frozen` wraps."""
    return module.module if isinstance(module, Frozen) else module


def create_network(
    cfg: BackboneConfig, in_channels: int, head: str | None = None
) -> IncrementalNet:
    """Build the backbone named ``cfg.name`` with an empty head.

    Args:
        cfg: backbone config.
        in_channels: image channels.
        head: a registered head (``linear``, ``cosine``); None = ``cfg.head`` (and ``linear``
            when that is None too).

    Returns:
        An :class:`IncrementalNet` with 0 classes; call :meth:`IncrementalNet.expand` per task.
    """
    backbone = create_backbone(cfg, in_channels)
    name = head or cfg.head or "linear"
    return IncrementalNet(backbone, create_head(name, cfg, backbone.out_dim))
