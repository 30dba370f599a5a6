"""Long-tailed classification losses, registered by import (``learner.loss.name``).

Every loss here computes in float32 (bf16 / fp16 logits are upcast), is batched, works with any
number of classes, and reads the training class counts given by ``set_class_counts``. A class
with no training sample is treated as if it had one wherever a logarithm or a power of its count
is taken, so the losses stay finite. Per-class weights from :meth:`ClassificationLoss.weights`
(deferred re-weighting, ``drw_start_epoch``) are applied as a weighted mean over the batch,
``sum_i w_{y_i} l_i / sum_i w_{y_i}``, the convention of ``F.cross_entropy(weight=...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from cilkit.config.schema import FieldError, LossConfig
from cilkit.losses.base import ClassificationLoss, effective_number_weights, register_loss

# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _weighted_mean(
    values: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """Mean of per-sample ``values``, weighted by the weight of each sample's class."""
    if weights is None:
        return values.mean()
    w = weights.to(values.device, values.dtype)[targets]
    return (w * values).sum() / w.sum().clamp_min(1e-12)


def _log_prior(counts: torch.Tensor) -> torch.Tensor:
    """log of the class prior n_c / sum n; empty classes count as one sample (finite log)."""
    n = counts.float().clamp_min(1.0)
    return torch.log(n) - torch.log(n.sum())


class _CountsLoss(ClassificationLoss):
    """A loss that needs the class counts; checks they were set and match the logits."""

    def _counts_for(self, logits: torch.Tensor) -> torch.Tensor:
        counts = self.class_counts
        if counts.numel() == 0:
            raise RuntimeError(
                f"loss '{self.cfg.name}' needs the class counts: call set_class_counts first"
            )
        if counts.numel() != logits.shape[-1]:
            raise ValueError(
                f"loss '{self.cfg.name}': {logits.shape[-1]} logits per sample but class counts "
                f"for {counts.numel()} classes"
            )
        return counts.to(logits.device, torch.float32)


# ---------------------------------------------------------------------------------------------
# Focal and class-balanced losses
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FocalLossConfig(LossConfig):
    """Softmax focal loss options."""

    name: str = "focal"
    gamma: float = 1.0
    """Focusing exponent: (1 - p_y)^gamma scales the cross-entropy; 0 gives plain cross-entropy.
    1 is the value used for long-tailed CIFAR by Cao et al. 2019 (LDAM-DRW baselines); Lin et al.
    2017 use 2 for dense detection with sigmoid outputs."""

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise FieldError("gamma", "must be >= 0")


def _focal_terms(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample (1 - p_y)^gamma * (-log p_y) of the softmax of float32 ``logits``."""
    log_p = F.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    ce = -log_p
    if gamma == 0:
        return ce
    modulator = (1.0 - log_p.exp()).clamp_min(1e-12).pow(gamma)
    return modulator * ce


@register_loss("focal")
class FocalLoss(ClassificationLoss):
    """Softmax focal loss (Lin et al., ICCV 2017): mean of (1 - p_y)^gamma * cross-entropy.

    ``l_i = -(1 - p_{i,y_i})^gamma log p_{i,y_i}`` with ``p = softmax(z)``, averaged over the
    batch (weighted by the DRW class weights when those are on). The modulating factor is not
    detached, as in the paper. The default gamma is 1, the value of the long-tailed CIFAR
    experiments of Cao et al. (NeurIPS 2019, github.com/kaidic/LDAM-DRW).

    Args:
        cfg: a :class:`FocalLossConfig`.
    """

    config_cls = FocalLossConfig
    cfg: FocalLossConfig

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        terms = _focal_terms(logits.float(), targets, self.cfg.gamma)
        return _weighted_mean(terms, targets, self.weights())


@dataclass(frozen=True)
class ClassBalancedLossConfig(LossConfig):
    """Class-balanced loss options."""

    name: str = "cb"
    beta: float = 0.9999
    """Beta of the effective number (1 - beta^n) / (1 - beta); weights are its inverse."""
    base: Literal["ce", "focal"] = "ce"
    """Loss that is re-weighted: softmax cross-entropy or softmax focal loss."""
    gamma: float = 1.0
    """Focusing exponent of the focal base loss (ignored for ``ce``)."""

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 1:
            raise FieldError("beta", "must be in [0, 1)")
        if self.gamma < 0:
            raise FieldError("gamma", "must be >= 0")


@register_loss("cb")
class ClassBalancedLoss(_CountsLoss):
    """Class-balanced loss (Cui et al., CVPR 2019): CE or focal weighted by inverse effective number.

    Class ``c`` gets weight ``w_c = (1 - beta) / (1 - beta^{n_c})``, normalised so the weights sum
    to the number of classes (0 for a class with no sample); the base loss (softmax CE or focal,
    option ``base``) is averaged over the batch with these weights. With ``drw_start_epoch`` set
    the weights are deferred: uniform before that epoch, class-balanced (with this loss's
    ``beta``) from it, i.e. CB-DRW; ``drw_beta`` is then unused.

    Args:
        cfg: a :class:`ClassBalancedLossConfig`.
    """

    config_cls = ClassBalancedLossConfig
    cfg: ClassBalancedLossConfig

    def _update_weights(self) -> None:
        start = self.cfg.drw_start_epoch
        if len(self.class_counts) and (start is None or self.epoch >= start):
            self.class_weights = effective_number_weights(self.class_counts, self.cfg.beta)
        else:
            self.class_weights = torch.zeros(0, device=self.class_counts.device)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._counts_for(logits)
        gamma = self.cfg.gamma if self.cfg.base == "focal" else 0.0
        terms = _focal_terms(logits.float(), targets, gamma)
        return _weighted_mean(terms, targets, self.weights())


# ---------------------------------------------------------------------------------------------
# Margin and logit-adjustment losses
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LDAMLossConfig(LossConfig):
    """LDAM loss options."""

    name: str = "ldam"
    max_m: float = 0.5
    """Largest margin (that of the rarest class); margins are proportional to n^(-1/4)."""
    s: float = 30.0
    """Scale applied to the margin-adjusted cosine logits."""

    def __post_init__(self) -> None:
        if self.max_m < 0:
            raise FieldError("max_m", "must be >= 0")
        if self.s <= 0:
            raise FieldError("s", "must be > 0")


@register_loss("ldam")
class LDAMLoss(_CountsLoss):
    """Label-distribution-aware margin loss (Cao et al., NeurIPS 2019); LDAM-DRW with DRW.

    Margins ``m_j = C / n_j^{1/4}`` with ``C`` chosen so the largest margin is ``max_m`` (0.5);
    the loss is ``CE(s * (z - m_y e_y), y)``: the target logit loses its class's margin, then all
    logits are multiplied by ``s`` (30), as in the official code (github.com/kaidic/LDAM-DRW).
    LDAM expects cosines in [-1, 1], as the official ``NormedLinear`` head gives: the run must use
    ``backbone: {head: cosine, learn_cosine_scale: false, cosine_scale: 1}`` and is refused
    otherwise. (With a learnable head scale sigma the loss would be ``CE(s (sigma cos - m))``:
    sigma grows during training and shrinks every margin relative to the logits.) LDAM-DRW (the
    paper's best) is ``{name: ldam, drw_start_epoch: 160}`` for 200 epochs: the base class
    switches to effective-number weights (beta 0.9999) at epoch 160.

    Args:
        cfg: an :class:`LDAMLossConfig`.
    """

    config_cls = LDAMLossConfig
    needs_cosine_logits = True
    cfg: LDAMLossConfig

    def margins(self) -> torch.Tensor:
        """Per-class margins ``max_m * n^{-1/4} / max(n^{-1/4})`` (empty classes count as 1)."""
        inv = self.class_counts.float().clamp_min(1.0).pow(-0.25)
        return inv * (self.cfg.max_m / inv.max().clamp_min(1e-12))

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._counts_for(logits)
        z = logits.float()
        m = self.margins().to(z.device)
        margin = torch.zeros_like(z).scatter_(-1, targets[:, None], m[targets][:, None])
        ce = F.cross_entropy(self.cfg.s * (z - margin), targets, reduction="none")
        return _weighted_mean(ce, targets, self.weights())


@register_loss("bsce")
class BalancedSoftmaxLoss(_CountsLoss):
    """Balanced softmax cross-entropy (Ren et al., NeurIPS 2020): CE(z + log n_y).

    The softmax is taken over ``z_j + log n_j`` (equivalently ``z_j + log pi_j``; the constant
    cancels), which trains ``z`` to the class-balanced posterior: predictions use ``z`` as is
    (official code: github.com/jiawei-ren/BalancedMetaSoftmax-Classification).
    """

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        counts = self._counts_for(logits)
        z = logits.float() + _log_prior(counts)
        ce = F.cross_entropy(z, targets, reduction="none")
        return _weighted_mean(ce, targets, self.weights())


@dataclass(frozen=True)
class LogitAdjustedLossConfig(LossConfig):
    """Logit adjustment options."""

    name: str = "la"
    tau: float = 1.0
    """Temperature of the adjustment tau * log(prior)."""
    posthoc: bool = False
    """Train with plain cross-entropy and subtract tau * log(prior) at prediction instead."""


@register_loss("la")
class LogitAdjustedLoss(_CountsLoss):
    """Logit adjustment (Menon et al., ICLR 2021): loss form CE(z + tau log pi) or post-hoc.

    Loss form (``posthoc: false``, default): train with ``CE(z + tau * log pi, y)`` where
    ``pi_j = n_j / sum n`` is the training prior; predict with ``z`` unchanged. Post-hoc form
    (``posthoc: true``): train with plain cross-entropy and predict with
    ``z - tau * log pi`` (:meth:`adjust_logits`). tau = 1 is the paper's default
    (github.com/google-research/google-research/tree/master/logit_adjustment).

    Args:
        cfg: a :class:`LogitAdjustedLossConfig`.
    """

    config_cls = LogitAdjustedLossConfig
    cfg: LogitAdjustedLossConfig

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        z = logits.float()
        if not self.cfg.posthoc:
            z = z + self.cfg.tau * _log_prior(self._counts_for(logits))
        ce = F.cross_entropy(z, targets, reduction="none")
        return _weighted_mean(ce, targets, self.weights())

    def adjust_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``z - tau * log pi`` in the post-hoc form; ``z`` otherwise (or before any counts)."""
        if not self.cfg.posthoc or self.class_counts.numel() == 0:
            return logits
        return logits.float() - self.cfg.tau * _log_prior(self._counts_for(logits))


# ---------------------------------------------------------------------------------------------
# LADE
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LADELossConfig(LossConfig):
    """LADE options."""

    name: str = "lade"
    alpha: float = 0.1
    """Weight of the LADER regulariser added to the PC-softmax cross-entropy."""
    remine_lambda: float = 0.1
    """Weight of the ReMINE regularisation (squared log-partition term) inside LADER."""

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise FieldError("alpha", "must be >= 0")
        if self.remine_lambda < 0:
            raise FieldError("remine_lambda", "must be >= 0")


@register_loss("lade")
class LADELoss(_CountsLoss):
    """Label distribution disentangling loss (Hong et al., CVPR 2021): PC-softmax CE + LADER.

    With the training prior ``pi`` (from the counts), ``C`` classes and a batch of ``N`` samples:

    * PC-softmax CE: ``CE(z + log pi, y)`` (class-weighted by DRW when on);
    * LADER, the ReMINE lower bound of ``log p_s(x|c)``, per class ``c``:
      ``first_c = mean_{i: y_i = c} z_ic`` (0 when ``c`` is absent from the batch),
      ``second_c = logsumexp_i(z_ic - log pi_c + log(1 / C)) - log N``,
      ``lader = -sum_c pi_c (first_c - second_c - remine_lambda * second_c^2)``;
    * loss = CE + ``alpha`` * lader (alpha 0.1 and remine_lambda 0.1, the paper's CIFAR-100-LT
      setting; official code github.com/hyperconnect/LADE, ``loss/LADELoss.py``).

    The logits are thereby trained as prior-free scores (``log p(x|y)`` up to a constant), so
    the prediction for a balanced test set is ``argmax z`` with no prior term; for a known test
    prior ``pt`` it would be ``argmax z + log pt``. :meth:`adjust_logits` returns ``z``.

    Args:
        cfg: a :class:`LADELossConfig`.
    """

    config_cls = LADELossConfig
    cfg: LADELossConfig

    def lader(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The LADER regulariser of float32 ``logits`` (N, C)."""
        counts = self._counts_for(logits)
        log_prior = _log_prior(counts)
        num_classes = logits.shape[-1]
        n = logits.shape[0]
        one_hot = F.one_hot(targets, num_classes).to(logits.dtype)  # N x C
        per_class = one_hot.sum(0)
        first = (logits * one_hot).sum(0) / per_class.clamp_min(1.0)
        shifted = logits - log_prior - math.log(num_classes)
        second = torch.logsumexp(shifted, dim=0) - math.log(n)
        bound = first - second - self.cfg.remine_lambda * second.square()
        return -(log_prior.exp() * bound).sum()

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        z = logits.float()
        counts = self._counts_for(logits)
        ce = F.cross_entropy(z + _log_prior(counts), targets, reduction="none")
        loss = _weighted_mean(ce, targets, self.weights())
        if self.cfg.alpha > 0:
            loss = loss + self.cfg.alpha * self.lader(z, targets)
        return loss

    def adjust_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The prior-free scores ``z`` (balanced test prior): no adjustment."""
        return logits


# ---------------------------------------------------------------------------------------------
# GML
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GMLLossConfig(LossConfig):
    """GML options."""

    name: str = "gml"
    p: float = 1.0
    """Exponent of the generalised mean of the per-class -log mean probabilities; 1 is the
    paper's loss (minus the log of their geometric mean), larger values stress the worst classes."""

    def __post_init__(self) -> None:
        if self.p <= 0:
            raise FieldError("p", "must be > 0")


@register_loss("gml")
class GMLLoss(_CountsLoss):
    """Geometric mean loss (Du & Wu, CVPR 2023, "No One Left Behind"): lifts the worst classes.

    Each sample's probability of its label is taken from the logit-adjusted softmax,
    ``p_i = softmax(z_i + log n)_{y_i}``; for each class ``c`` present in the batch the mean
    ``pbar_c`` of ``p_i`` over its samples estimates its recall; with ``l_c = -log pbar_c`` the loss
    is the generalised mean ``(mean_c l_c^p)^(1/p)`` over the classes present (weighted by the DRW
    class weights when on). ``p = 1`` is the paper's loss ``-(1/|C_B|) sum_c log pbar_c``, minus
    the log of the geometric mean of the per-class mean probabilities (arXiv 2303.03630).
    ``log pbar_c`` is computed as a per-class logsumexp of ``log p_i``, so it never underflows.

    Args:
        cfg: a :class:`GMLLossConfig`.
    """

    config_cls = GMLLossConfig
    cfg: GMLLossConfig

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        counts = self._counts_for(logits)
        z = logits.float() + _log_prior(counts)
        log_p = F.log_softmax(z, dim=-1).gather(-1, targets[:, None]).squeeze(-1)  # N
        num_classes = logits.shape[-1]
        per_class = torch.bincount(targets, minlength=num_classes)
        present = (per_class > 0).nonzero().squeeze(-1)  # K
        member = targets[None, :] == present[:, None]  # K x N
        masked = torch.where(member, log_p[None, :], torch.full_like(log_p, -math.inf)[None, :])
        log_mean = torch.logsumexp(masked, dim=1) - per_class[present].float().log()
        losses = (-log_mean).clamp_min(0.0)  # pbar <= 1; clamp rounding
        weights = self.weights()
        if weights is None:
            w = torch.ones_like(losses)
        else:
            w = weights.to(losses.device, losses.dtype)[present]
        w = w / w.sum().clamp_min(1e-12)
        if self.cfg.p == 1.0:
            return (w * losses).sum()
        return (w * losses.pow(self.cfg.p)).sum().clamp_min(1e-12).pow(1.0 / self.cfg.p)


# ---------------------------------------------------------------------------------------------
# Feature-balanced loss
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureBalancedLossConfig(LossConfig):
    """Feature-balanced loss options."""

    name: str = "feabal"
    scale: float = 60.0
    """Stimulus strength A (the official ``lambda_``): 60 for CIFAR-LT, 150 for ImageNet-LT,
    iNaturalist and Places-LT."""

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise FieldError("scale", "must be >= 0")


@register_loss("feabal")
class FeatureBalancedLoss(_CountsLoss):
    """Feature-balanced loss (Li, Cheung & Jiang, ICME 2022): logits offset by stimulus / |f|.

    Class ``j`` gets the stimulus ``lambda_j = (log n_max - log n_j) / max_k(log n_max - log n_k)``
    (0 for the most frequent class, 1 for the rarest); each sample's logits become
    ``z_j - alpha(t) * A * lambda_j / ||f||`` with ``f`` the backbone feature fed to the head,
    trained with cross-entropy. The offset is larger for rarer classes and shrinks as the feature
    norm grows, so it pushes tail samples towards larger feature norms. ``alpha`` follows the
    paper's parabolic-increase curriculum ``alpha(t) = (t / T)^2`` with ``t`` the 0-based epoch of
    a ``T``-epoch task (0 at the first epoch, 1/4 half-way, ((T-1)/T)^2 at the last); the official
    code uses ``(t / (T - 10))^2`` for its 200-epoch schedules. ``A`` defaults to 60 (CIFAR-LT; the
    official README uses 150 on ImageNet-LT / iNaturalist / Places-LT). Prediction uses the plain
    logits. Paper: arXiv 2305.10772; official code: github.com/juyongjiang/FBL (``loss.py``).

    Args:
        cfg: a :class:`FeatureBalancedLossConfig`.
    """

    config_cls = FeatureBalancedLossConfig
    needs_features = True
    cfg: FeatureBalancedLossConfig

    @staticmethod
    def curriculum(epoch: int, epochs: int) -> float:
        """The parabolic curriculum ``(epoch / epochs)^2`` (clamped to [0, 1])."""
        return min(max(epoch / max(epochs, 1), 0.0), 1.0) ** 2

    def stimuli(self) -> torch.Tensor:
        """Per-class ``lambda_j`` in [0, 1] (all 0 when every class has the same count)."""
        log_n = self.class_counts.float().clamp_min(1.0).log()
        gap = log_n.max() - log_n
        return gap / gap.max().clamp_min(1e-12)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        if features is None:
            raise ValueError("loss 'feabal' needs the features: forward(logits, targets, features)")
        self._counts_for(logits)
        z = logits.float()
        norm = features.float().flatten(1).norm(dim=1, keepdim=True)  # N x 1
        strength = self.curriculum(self.epoch, self.epochs) * self.cfg.scale
        z = z - strength * self.stimuli().to(z.device) / (norm + 1e-12)
        ce = F.cross_entropy(z, targets, reduction="none")
        return _weighted_mean(ce, targets, self.weights())
