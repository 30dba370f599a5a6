"""Label-aware smoothing (Zhong et al., "Improving Calibration for Long-Tailed Recognition",
CVPR 2021, MiSLAS), registered as ``las``: label smoothing whose strength depends on the class's
training count, stronger for frequent classes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from cilkit.config.schema import FieldError, LossConfig
from cilkit.losses.base import register_loss
from cilkit.losses.long_tail import _CountsLoss, _weighted_mean


@dataclass(frozen=True)
class LabelAwareSmoothingConfig(LossConfig):
    """Label-aware smoothing options (defaults: the authors' CIFAR-100-LT, IF 100 values)."""

    name: str = "las"
    smooth_head: float = 0.4
    """Smoothing of the most frequent class (epsilon_1)."""
    smooth_tail: float = 0.1
    """Smoothing of the rarest class (epsilon_K)."""
    shape: Literal["concave", "linear", "convex", "exp"] = "concave"
    """How epsilon grows from tail to head with the count (the paper's Eq. 7 forms; ``exp`` is
    the power form of the authors' code, ``((n - n_K) / (n_1 - n_K)) ** power``)."""
    power: float | None = None
    """Exponent of the ``exp`` shape (required by it, unused by the others)."""

    def __post_init__(self) -> None:
        for key in ("smooth_head", "smooth_tail"):
            if not 0 <= getattr(self, key) < 1:
                raise FieldError(key, "must be in [0, 1)")
        if self.smooth_head < self.smooth_tail:
            raise FieldError("smooth_head", "must be >= smooth_tail (frequent classes smooth more)")
        if self.shape == "exp" and (self.power is None or self.power <= 0):
            raise FieldError("power", "shape 'exp' needs a power > 0")
        if self.shape != "exp" and self.power is not None:
            raise FieldError("power", f"only used by shape 'exp', not '{self.shape}'")


def label_aware_epsilons(
    counts: torch.Tensor, head: float, tail: float, shape: str, power: float | None = None
) -> torch.Tensor:
    """Per-class smoothing: ``tail`` for the rarest class, ``head`` for the most frequent, and
    between them a function of ``r = (n - n_K) / (n_1 - n_K)`` (authors' ``methods.py``):

    - concave: ``tail + (head - tail) * sin(pi r / 2)``
    - linear: ``tail + (head - tail) * r``
    - convex: ``head + (head - tail) * sin(3 pi / 2 + pi r / 2)``
    - exp: ``tail + (head - tail) * r ** power``

    When every class has the same count (where the authors' formula divides by zero) every class
    counts as the most frequent and gets ``head``.
    """
    n = counts.double()
    span = n.max() - n.min()
    if span == 0:
        return torch.full_like(n, head, dtype=torch.float32)
    r = (n - n.min()) / span
    if shape == "concave":
        eps = tail + (head - tail) * torch.sin(r * math.pi / 2)
    elif shape == "linear":
        eps = tail + (head - tail) * r
    elif shape == "convex":
        eps = head + (head - tail) * torch.sin(1.5 * math.pi + r * math.pi / 2)
    elif shape == "exp":
        eps = tail + (head - tail) * r.pow(power)
    else:
        raise ValueError(f"unknown label-aware smoothing shape '{shape}'")
    return eps.float()


@register_loss("las")
class LabelAwareSmoothingLoss(_CountsLoss):
    """Label-aware smoothing (MiSLAS's stage-2 loss).

    ``l_i = (1 - e_y) (-log p_y) + e_y * mean_j (-log p_j)`` with ``e_y`` the smoothing of the
    sample's class from :func:`label_aware_epsilons` over the training class counts: a frequent
    class's target is smoothed more (less over-confidence), a rare class's less. Averaged over the
    batch (weighted by the DRW class weights when those are on), as the authors'
    ``LabelAwareSmoothing``. The uniform part spreads over every logit, seen classes without a
    sample included, as theirs does.

    Args:
        cfg: a :class:`LabelAwareSmoothingConfig`.
    """

    config_cls = LabelAwareSmoothingConfig
    cfg: LabelAwareSmoothingConfig

    def epsilons(self, logits: torch.Tensor) -> torch.Tensor:
        """The per-class smoothing for the classes of ``logits``."""
        c = self.cfg
        counts = self._counts_for(logits)
        return label_aware_epsilons(counts, c.smooth_head, c.smooth_tail, c.shape, c.power)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = logits.float()
        eps = self.epsilons(logits).to(logits.device)[targets]
        log_p = F.log_softmax(logits, dim=-1)
        nll = -log_p.gather(-1, targets[:, None]).squeeze(-1)
        uniform = -log_p.mean(dim=-1)
        return _weighted_mean((1.0 - eps) * nll + eps * uniform, targets, self.weights())
