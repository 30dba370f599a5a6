"""FeCAM: class prototypes with per-class covariances and a Mahalanobis-distance classifier on a
backbone frozen after the first task (or a frozen pre-trained model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cilkit.components.analytic import (
    ClassStatistics,
    mahalanobis,
    normalize_covariance,
    shrink_covariance,
    tukey,
)
from cilkit.config.schema import FieldError, LearnerConfig
from cilkit.contract import TaskContext
from cilkit.errors import ConfigError
from cilkit.learners.base import register_learner
from cilkit.learners.frozen_backbone import FrozenBackboneLearner


@dataclass(frozen=True)
class FeCAMConfig(LearnerConfig):
    name: str = "fecam"
    pretrained: bool = False
    """Keep the backbone frozen from the start (a pre-trained model); false trains it on the
    first task (with the cosine head), frozen afterwards."""
    tukey_beta: float | None = 0.5
    """Tukey's power (0: log) applied to the features for the covariances and to test features
    and prototypes; None = off (the authors' ViT script). Needs non-negative features."""
    shrink_alpha1: float = 1.0
    """Shrinkage towards the mean variance on the diagonal."""
    shrink_alpha2: float = 1.0
    """Shrinkage towards the mean covariance off the diagonal (the ViT script: 0)."""
    shrink_repeats: int = 2
    """Times the shrinkage is applied (the authors' code: twice; the ViT script: once)."""
    normalize_covariance: bool = True
    """Normalise each covariance to a correlation matrix (the authors' ``norm_cov``)."""
    normalize_features: bool = False
    """L2-normalise the features before the prototypes and covariances (the ViT script)."""
    renormalize: bool = True
    """L2-normalise the (transformed) test feature and prototype before their difference (the
    authors' code; the ViT script does not)."""
    head_on_first_task: bool = True
    """With a trained backbone, classify the first task by the Euclidean distance of the
    normalised features to the trained head's normalised weights, as the authors' code does
    (its ``_init_protos``); the Mahalanobis classifier from the second task on."""

    def __post_init__(self) -> None:
        if self.shrink_repeats < 0:
            raise FieldError("shrink_repeats", "must be >= 0")
        if self.tukey_beta is not None and self.tukey_beta < 0:
            raise FieldError("tukey_beta", "must be >= 0 (or null for no transform)")
        if self.rebalance is not None:
            raise FieldError("rebalance", "fecam classifies by distances: no rebalancing")


@register_learner("fecam")
class FeCAM(FrozenBackboneLearner):
    """FeCAM (Goswami et al., NeurIPS 2023): prototypes, per-class covariances with shrinkage,
    Tukey's transform and a Mahalanobis-distance classifier on a frozen backbone.

    Goswami, Liu, Twardowski, van de Weijer, "FeCAM: Exploiting the Heterogeneity of Class
    Distributions in Exemplar-Free Continual Learning", NeurIPS 2023; the defaults follow the
    authors' many-shot code (dipamgoswami/FeCAM ``models/fecam.py``, ``models/base.py``,
    ``exps/FeCAM_cifar100.json``):

    - the backbone is trained on the first task with a cosine classifier (the code's
      ``CosineIncrementalNet``; ``optim``/``train`` set the schedule, the code: SGD lr 0.1,
      cosine, 200 epochs) and frozen afterwards; ``pretrained: true`` keeps it frozen;
    - prototypes: the mean of each class's un-augmented training features;
    - covariances: ``numpy.cov`` of Tukey-transformed (``beta`` 0.5) features, shrunk twice
      (``alpha1 = alpha2 = 1``: the code shrinks in ``compute_new_cov`` and again in ``_train``),
      normalised to correlations, pseudo-inverted (float64, kept in float32 as the code);
    - scores: minus the squared Mahalanobis distance between the L2-normalised, Tukey-
      transformed, re-normalised test feature and the Tukey-transformed, normalised prototype;
    - after the first task (backbone trained), the code classifies by the trained head's
      weights as prototypes with an identity covariance and no Tukey transform
      (``head_on_first_task``).

    The paper writes one shrinkage (the code shrinks twice "to obtain better estimates"), and
    the first task's head prototypes are the code's. The authors' ViT script (``FeCAM_vit_cifar100.py``) differs; it is ``pretrained: true,
    tukey_beta: null, shrink_alpha2: 0, shrink_repeats: 1, normalize_features: true,
    renormalize: false``. LAMDA-PILOT's ``fecam`` adapts a ViT adapter on the first session,
    adds ``100 I`` to the covariance of the raw features (``torch.cov``), takes
    ``torch.corrcoef`` and has no Tukey transform. One ``d x d`` float32 matrix per class is
    kept (ViT-B: 2.4 MB a class).
    """

    config_cls = FeCAMConfig
    cfg: FeCAMConfig
    head = "cosine"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        d = self.network.feature_dim
        self.prototypes = ClassStatistics(d)
        self.register_buffer("precisions", torch.zeros(0, d, d))

    def trains_first_task(self) -> bool:
        return not self.cfg.pretrained

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.cfg.tukey_beta is None else tukey(x, self.cfg.tukey_beta)

    @torch.no_grad()
    def after_task(self, ctx: TaskContext) -> None:
        super().after_task(ctx)
        self.freeze_backbone()
        features, labels = self.task_features(ctx)
        x = features.double()
        if self.cfg.normalize_features:
            x = F.normalize(x, dim=1)
        if self.cfg.tukey_beta is not None and bool((x < 0).any()):
            raise ConfigError(
                "learner.tukey_beta: Tukey's transform needs non-negative features and this "
                "backbone's are not (a ViT's): set learner.tukey_beta=null"
            )
        self.prototypes.update(x, labels, self.num_seen_classes)
        old, new = self.num_old_classes, ctx.info.num_new_classes
        stats = ClassStatistics(x.shape[1], scatter=True).to(x.device)
        stats.update(self.transform(x), labels - old, new)
        cov = stats.covariances()
        for _ in range(self.cfg.shrink_repeats):
            cov = shrink_covariance(cov, self.cfg.shrink_alpha1, self.cfg.shrink_alpha2)
        if self.cfg.normalize_covariance:
            cov = normalize_covariance(cov)
        precisions = torch.linalg.pinv(cov).to(self.precisions)
        self.precisions = torch.cat([self.precisions[:old], precisions])

    def scores(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.normalize(features, dim=1)
        if self.cfg.head_on_first_task and self.trains_first_task() and not self.num_old_classes:
            weights = F.normalize(self.network.head.weight.float(), dim=1)
            return {"cnn": -torch.cdist(x, weights).square()}
        means = self.prototypes.means().float()
        x, means = self.transform(x), self.transform(means)
        if self.cfg.renormalize:
            x, means = F.normalize(x, dim=1), F.normalize(means, dim=1)
        return {"cnn": -mahalanobis(x, means, self.precisions)}
