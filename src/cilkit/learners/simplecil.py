"""SimpleCIL: class prototypes of a frozen pre-trained model and a cosine classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cilkit.components.analytic import ClassStatistics
from cilkit.config.schema import FieldError, LearnerConfig
from cilkit.contract import TaskContext
from cilkit.learners.base import register_learner
from cilkit.learners.frozen_backbone import FrozenBackboneLearner


@dataclass(frozen=True)
class SimpleCILConfig(LearnerConfig):
    name: str = "simplecil"

    def __post_init__(self) -> None:
        if self.rebalance is not None:
            raise FieldError("rebalance", "simplecil trains no head to rebalance")


@register_learner("simplecil")
class SimpleCIL(FrozenBackboneLearner):
    """SimpleCIL (Zhou et al., IJCV 2024): prototypes of a frozen model, cosine classifier.

    Zhou, Cai, Ye, Zhan, Liu, "Revisiting Class-Incremental Learning with Pre-Trained Models:
    Generalizability and Adaptivity are All You Need", IJCV 2024 (zhoudw-zdw/RevisitingCIL,
    LAMDA-CL/LAMDA-PILOT ``models/simplecil.py``). The backbone is never trained; after each
    task the prototype of each new class is the mean of the features of all its training
    images, un-augmented (the code's ``mode="test"`` loader), and a test image is scored by its
    cosine similarity to every prototype. The authors' code and PILOT write the prototypes into
    a cosine head's weights (``fc.weight.data[c] = proto``, scale 1): the same scores, kept here
    as running class statistics (:class:`ClassStatistics`, float64) and no head; a class seen
    again in a later task would have its mean updated over all its images.
    """

    config_cls = SimpleCILConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prototypes = ClassStatistics(self.network.feature_dim)

    def after_task(self, ctx: TaskContext) -> None:
        super().after_task(ctx)
        features, labels = self.task_features(ctx)
        self.prototypes.update(features, labels, self.num_seen_classes)

    def scores(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        prototypes = F.normalize(self.prototypes.means(), dim=1)
        return {"cnn": F.normalize(features.to(prototypes), dim=1) @ prototypes.T}
