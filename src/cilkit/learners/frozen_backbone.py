"""The common part of the methods that classify a frozen backbone's features in closed form
(SimpleCIL, FeCAM, ACIL, DS-AL, RanPAC): not a method of its own, so not registered."""

from __future__ import annotations

import torch
from torch import nn

from cilkit.backbones import Frozen
from cilkit.contract import TaskContext
from cilkit.learners.base import Learner

_FROZEN_KEY = "network.backbone.module."


class FrozenBackboneLearner(Learner):
    """A backbone frozen from the start (a pre-trained model) or after the first task's
    backpropagation, and a classifier of its features computed after each task.

    - Frozen is declared: the backbone is wrapped in :class:`Frozen` (no gradient, eval mode
      whatever the engine calls), and ``train_indices`` is empty in every task once it is, so
      the engine trains nothing. A checkpoint's keys say whether it was frozen
      (``network.backbone.module.*``), so a fresh learner loads it in the same form.
    - Each training image's features are computed once per weight state, through the
      learner's feature cache (:meth:`task_features`, ``features_fn``), un-augmented.
    - Evaluation: :meth:`evaluation_extractor` is the frozen backbone and
      :meth:`predict_features` scores its features, so ``predict(x)`` is
      ``predict_features(backbone(x))`` and the engine may cache the test features.
      Scores are computed in full precision (autocast off).

    Subclasses set :meth:`trains_first_task` and implement :meth:`scores` and ``after_task``.
    """

    needs_memory = False
    uses_memory = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.trains_first_task():
            self.freeze_backbone()

    def trains_first_task(self) -> bool:
        """Backpropagate on the first task before freezing (default: frozen from the start)."""
        return False

    @property
    def backbone_frozen(self) -> bool:
        return isinstance(self.network.backbone, Frozen)

    def freeze_backbone(self) -> None:
        """Wrap the backbone in :class:`Frozen` (idempotent)."""
        if not self.backbone_frozen:
            self.network.backbone = Frozen(self.network.backbone)

    def train_indices(self, ctx: TaskContext) -> torch.Tensor:
        """The first task's samples while the backbone still trains; nothing afterwards."""
        if self.backbone_frozen:
            return torch.zeros(0, dtype=torch.long)
        return super().train_indices(ctx)

    def evaluation_extractor(self) -> nn.Module | None:
        return self.network.backbone if self.backbone_frozen else None

    @torch.no_grad()
    def predict_features(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(features.device.type, enabled=False):
            return self.scores(features.float())

    def scores(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scores per classifier of fp32 ``features`` (``cnn``: the method's own)."""
        raise NotImplementedError

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if any(k.startswith(_FROZEN_KEY) for k in state_dict):
            self.freeze_backbone()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
