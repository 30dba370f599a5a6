"""Losses: distillation, and classification losses registered by import (cross-entropy and the
long-tail losses)."""

from cilkit.losses.base import (
    LOSSES,
    ClassificationLoss,
    LossConfig,
    create_loss,
    effective_number_weights,
    register_loss,
)
from cilkit.losses.distillation import kd_loss
from cilkit.losses.diversity import diversity_kl
from cilkit.losses.label_aware_smoothing import LabelAwareSmoothingLoss  # noqa: F401
from cilkit.losses.long_tail import (
    BalancedSoftmaxLoss,
    ClassBalancedLoss,
    FeatureBalancedLoss,
    FocalLoss,
    GMLLoss,
    LADELoss,
    LDAMLoss,
    LogitAdjustedLoss,
)
from cilkit.losses.paco import paco_loss

__all__ = [
    "LOSSES",
    "BalancedSoftmaxLoss",
    "ClassBalancedLoss",
    "ClassificationLoss",
    "FeatureBalancedLoss",
    "FocalLoss",
    "GMLLoss",
    "LADELoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "LossConfig",
    "create_loss",
    "diversity_kl",
    "effective_number_weights",
    "kd_loss",
    "paco_loss",
    "register_loss",
]
