"""The classification-loss contract and registry (cross-entropy and the long-tail losses).

A loss is a module built from its typed config. The learner tells it the training class counts
before each task (``set_class_counts``) and the epoch before each epoch (``set_epoch``, for
deferred re-weighting and curricula); ``adjust_logits`` is applied at prediction time (post-hoc
logit adjustment). Per-class weights (class-balanced, DRW) are handled here for every loss.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from cilkit.config.schema import LossConfig
from cilkit.registry import Registry


class ClassificationLoss(nn.Module):
    """Cross-entropy with optional per-class weights; the base of every registered loss.

    Args:
        cfg: this loss's config.
    """

    config_cls: ClassVar[type[LossConfig]] = LossConfig
    needs_features: ClassVar[bool] = False
    """The loss also needs the features (``forward(logits, targets, features)``)."""
    needs_cosine_logits: ClassVar[bool] = False
    """The loss expects cosines in [-1, 1]: a cosine head with a fixed scale of 1."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("class_counts", torch.zeros(0))
        self.register_buffer("class_weights", torch.zeros(0))  # empty = uniform
        self.epoch = 0
        self.epochs = 1

    def set_class_counts(self, counts: torch.Tensor) -> None:
        """Training images per (remapped) class of the data about to be trained on."""
        self.class_counts = counts.to(self.class_counts.device, torch.float32)
        self._update_weights()

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each epoch (0-based) of a task with ``epochs`` epochs."""
        self.epoch, self.epochs = epoch, epochs
        self._update_weights()

    def _update_weights(self) -> None:
        start = self.cfg.drw_start_epoch
        if start is not None and self.epoch >= start and len(self.class_counts):
            self.class_weights = effective_number_weights(self.class_counts, self.cfg.drw_beta)
        else:
            self.class_weights = torch.zeros(0, device=self.class_counts.device)

    def weights(self) -> torch.Tensor | None:
        """Current per-class weights, or None for uniform."""
        return self.class_weights if len(self.class_weights) else None

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), targets, weight=self.weights())

    def adjust_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Post-hoc adjustment of prediction scores (identity unless the loss says otherwise)."""
        return logits


def effective_number_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Class-balanced weights (Cui et al. 2019): (1 - beta) / (1 - beta^n), normalised to sum to
    the number of classes; classes with no samples get weight 0."""
    counts = counts.float()
    effective = (1.0 - torch.pow(beta, counts)) / (1.0 - beta)
    weights = torch.where(counts > 0, 1.0 / effective.clamp_min(1e-12), torch.zeros_like(counts))
    return weights * (len(counts) / weights.sum().clamp_min(1e-12))


LOSSES: Registry[type[ClassificationLoss]] = Registry("loss")


register_loss = LOSSES.register_class


register_loss("ce")(ClassificationLoss)


def create_loss(cfg: LossConfig) -> ClassificationLoss:
    """Build the loss named ``cfg.name``."""
    return LOSSES.create(cfg)
