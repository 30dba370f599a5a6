"""RanPAC: a fixed random projection of a frozen pre-trained model's features and a ridge
classifier on the Gram matrix accumulated over tasks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cilkit.backbones.peft import PEFTOptions, attach_peft
from cilkit.components.analytic import (
    RIDGES,
    RandomProjection,
    RidgeAccumulator,
    one_hot,
    select_ridge,
)
from cilkit.config.schema import FieldError, LearnerConfig
from cilkit.contract import Parameters, TaskContext
from cilkit.learners.base import register_learner
from cilkit.learners.frozen_backbone import FrozenBackboneLearner


@dataclass(frozen=True)
class RanPACConfig(PEFTOptions, LearnerConfig):
    name: str = "ranpac"
    M: int = 10000
    """Width of the random projection (the authors: 10000); 0 = none, the Gram matrix of the
    features themselves without ReLU (the authors' ``M=0``, decorrelation only)."""
    ridges: tuple[float, ...] = RIDGES
    """Ridge candidates (the authors: 10^-8 ... 10^8)."""
    train_fraction: float = 0.8
    """Share of each task's shuffled samples the candidates are fitted on; the rest validates."""
    adapt: bool = False
    """First-session adaptation (RanPAC's phase 1): tune the PEFT module ``peft`` with a cosine
    head on the first task, then freeze it with the ViT (needs a timm ViT backbone)."""

    def __post_init__(self) -> None:
        self.check_peft()
        if not self.adapt and self.peft != "adapter":
            raise FieldError("peft", "tunes a module only with adapt: true")
        if self.M < 0:
            raise FieldError("M", "must be >= 0")
        if not self.ridges or min(self.ridges) <= 0:
            raise FieldError("ridges", "needs at least one candidate, all > 0")
        if not 0 < self.train_fraction < 1:
            raise FieldError("train_fraction", "must be in (0, 1)")
        if self.rebalance is not None:
            raise FieldError("rebalance", "ranpac classifies analytically: no rebalancing")


@register_learner("ranpac")
class RanPAC(FrozenBackboneLearner):
    """RanPAC (McDonnell et al., NeurIPS 2023): random projection, Gram-matrix ridge classifier.

    McDonnell, Gong, Parvaneh, Abbasnejad, van den Hengel, "RanPAC: Random Projections and
    Pre-trained Models for Continual Learning", NeurIPS 2023; as in the authors' code
    (RanPAC/RanPAC ``RanPAC.py``: ``setup_RP``, ``replace_fc``, ``optimise_ridge_parameter``):

    - a frozen backbone; ``W`` ``(d, M)`` drawn once from ``N(0, 1)`` (``torch.randn``, here
      from the first task's generator) and ``h = relu(f W)``;
    - after each task, on its un-augmented training images: ``G += H^T H``, ``Q += H^T Y``
      (one-hot ``Y``), and ``W_o = (G + lambda I)^{-1} Q`` (``torch.linalg.solve``);
    - ``lambda`` is chosen anew at every task, on that task's samples alone (its own Gram
      matrix, not the accumulated one): in a random order (the code's shuffled loader), the
      first 80% fit each candidate 10^-8 ... 10^8 and the last 20% score it by the mean squared
      error to the one-hot targets (:func:`select_ridge`); the chosen ridges are kept in
      ``chosen_ridges``;
    - scores ``h W_o``, without normalisation (the code's ``CosineLinear`` with ``use_RP``).

    - ``adapt: true`` (the code's ``adapter``, ``ssf`` and ``vpt`` runs; PILOT's default):
      before all of this, on the first task, the PEFT module ``peft``
      (:mod:`cilkit.backbones.peft`) and a cosine head over the task's classes (the code's
      ``CosineLinear``, learned scale from 1) train with cross-entropy in the engine's loop,
      the ViT's own weights frozen (the code: SGD, momentum 0.9, ``body_lr`` 0.01, weight decay
      5e-4, cosine to ``min_lr`` 1e-8 over ``tuned_epoch`` 20, batch 48); then the adapted ViT
      is frozen, the head is no longer used, and the projection, Gram matrix and ridge run on
      the adapted features, the first task's included (the code's ``setup_RP`` and
      ``replace_fc`` after ``_init_train``). Unlike APER, only the adapted model's features
      are used, not the pre-trained one's beside them.

    The code keeps ``G`` and ``Q`` in float32 on the CPU; here float64 on the device (``G`` is
    ``M^2`` float64: 800 MB at M = 10000, saved with every checkpoint). LAMDA-PILOT's
    ``ranpac`` scores with its cosine head, normalising ``h`` and every class's weight row,
    and always adapts an adapter first.
    """

    config_cls = RanPACConfig
    cfg: RanPACConfig
    head = "cosine"  # trained only with adapt (the code's CosineLinear); never scores

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.cfg.adapt:
            backbone = self.network.backbone
            attach_peft(backbone, self.cfg.peft, "learner 'ranpac'", **self.cfg.peft_options())
        self.projection = RandomProjection(self.network.feature_dim, self.cfg.M, "normal", "relu")
        self.gram = RidgeAccumulator()
        self.register_buffer("output_weight", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("chosen_ridges", torch.zeros(0, dtype=torch.float64))

    def trains_first_task(self) -> bool:
        return self.cfg.adapt

    def configure_training(self, ctx: TaskContext) -> Parameters:
        """With ``adapt``, on the first task: the PEFT module and the head; the ViT's own
        weights never train."""
        backbone = self.network.backbone
        backbone.model.requires_grad_(False)
        return [*backbone.peft.parameters(), *self.network.head.parameters()]

    @torch.no_grad()
    def after_task(self, ctx: TaskContext) -> None:
        super().after_task(ctx)
        self.freeze_backbone()  # the adapted model, from here on (idempotent)
        if not self.projection.ready:
            self.projection.reset(ctx.generator)
        features, labels = self.task_features(ctx)
        H, Y = self.projection(features), one_hot(labels, self.num_seen_classes)
        order = torch.randperm(len(H), generator=ctx.generator).to(H.device)
        ridge, _ = select_ridge(H[order], Y[order], self.cfg.ridges, self.cfg.train_fraction)
        self.gram.update(H, Y)
        self.output_weight = self.gram.solve(ridge)
        self.chosen_ridges = torch.cat([self.chosen_ridges, self.chosen_ridges.new_tensor([ridge])])

    def scores(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cnn": self.projection(features) @ self.output_weight}
