"""ACIL: analytic class-incremental learning, a recursive least-squares classifier on a frozen
backbone's randomly expanded features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cilkit.components.analytic import RandomProjection, RecursiveRidge, one_hot
from cilkit.config.schema import FieldError, LearnerConfig
from cilkit.contract import Batch, StepOutput, TaskContext
from cilkit.errors import TrainingError
from cilkit.learners.base import register_learner
from cilkit.learners.frozen_backbone import FrozenBackboneLearner


@dataclass(frozen=True)
class ACILConfig(LearnerConfig):
    name: str = "acil"
    buffer_size: int = 8192
    """Width of the random buffer layer (the authors' ``--buffer-size``: 8192 on CIFAR-100,
    16384 on ImageNet)."""
    gamma: float = 0.1
    """Ridge of the analytic classifier (the authors' ``--gamma``: 0.1)."""
    base_training: bool = True
    """Backpropagate on the first task (the authors' base training, through the engine's loop
    with the linear head; ``optim``/``train`` set its schedule); false keeps a pre-trained
    backbone frozen from the start."""
    label_smoothing: float = 0.05
    """Label smoothing of the base training's cross-entropy (the authors' default; their
    README uses 0 on CIFAR-100, 0.05 on ImageNet)."""
    fit_batch_size: int = 4096
    """Rows per recursive update (the README's ``--IL-batch-size 4096``); the solution does not
    depend on it."""

    def __post_init__(self) -> None:
        if self.buffer_size < 1 or self.fit_batch_size < 1:
            raise FieldError("buffer_size", "buffer_size and fit_batch_size must be >= 1")
        if self.gamma <= 0:
            raise FieldError("gamma", "must be > 0")
        if not 0 <= self.label_smoothing < 1:
            raise FieldError("label_smoothing", "must be in [0, 1)")
        if self.label_smoothing and (
            self.loss.name != "ce" or self.loss.drw_start_epoch is not None
        ):
            raise FieldError("label_smoothing", "needs learner.loss ce without DRW (or 0)")
        if self.rebalance is not None:
            raise FieldError("rebalance", f"{self.name} classifies analytically: no rebalancing")


@register_learner("acil")
class ACIL(FrozenBackboneLearner):
    """ACIL (Zhuang et al., NeurIPS 2022): a frozen backbone, a random buffer layer and a
    recursive least-squares classifier equal to the joint ridge solution on all data seen.

    Zhuang, Zeng, Yang, Lin, Chen, Lin, Tan, "ACIL: Analytic Class-Incremental Learning with
    Absolute Memorization and Privacy Protection", NeurIPS 2022; details as in the authors'
    code (ZHUANGHP/Analytic-continual-learning, ``analytic/ACIL.py``, ``AnalyticLinear.py``,
    ``Buffer.py``, ``main.py``):

    - base training on the first task by backpropagation with a linear head (cross-entropy
      with label smoothing 0.05; the code uses SGD lr 0.5, cosine with 10 warm-up epochs, 300
      epochs: set them in ``optim`` and ``train``), then the backbone is frozen;
    - the buffer layer: a random ``nn.Linear`` (no bias, ``U(+-1/sqrt(d))``, float64) to
      ``buffer_size`` features and a ReLU, drawn once;
    - the analytic classifier is fitted on the first task's data too, after the base training
      (the code's "Re-align" phase), then on each task's data in turn by the recursive update
      (:class:`RecursiveRidge`, the code's mini-batch form from G-ACIL; float64), on
      un-augmented images; targets are one-hot over every seen class.

    The paper writes the first task's solution and then the recursive update; the code (G-ACIL's
    form) starts ``R = I / gamma`` and fits every task with the same chunked update, equal to
    the paper's up to rounding. ``gamma`` 0.1 and the buffer size 8192 are the code's defaults
    (the class ``ACIL``'s own ``gamma=1e-3`` default is overridden by ``--gamma``). PyCIL and
    LAMDA-PILOT have no ACIL. ``predict`` gives ``cnn``, the analytic classifier; the linear head
    only serves the base training. ``R`` is ``buffer_size^2`` float64 (512 MB at 8192) and is
    saved with every checkpoint.
    """

    config_cls = ACILConfig
    cfg: ACILConfig
    buffer_activation = "relu"
    """The buffer layer's activation (DS-AL: none, its streams have their own)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.buffer = RandomProjection(
            self.network.feature_dim, self.cfg.buffer_size, "uniform", self.buffer_activation
        )
        self.classifier = RecursiveRidge(self.cfg.gamma)

    def trains_first_task(self) -> bool:
        return self.cfg.base_training

    def training_step(self, batch: Batch) -> StepOutput:
        if not self.cfg.label_smoothing:
            return super().training_step(batch)
        _, logits = self.forward_train(batch.x)
        loss = F.cross_entropy(logits, batch.y, label_smoothing=self.cfg.label_smoothing)
        return StepOutput(loss, {"ce": loss.detach()}, logits)

    @torch.no_grad()
    def after_task(self, ctx: TaskContext) -> None:
        super().after_task(ctx)
        self.freeze_backbone()
        if not self.buffer.ready:
            self.buffer.reset(ctx.generator)
        features, labels = self.task_features(ctx)
        self.fit(self.buffer(features), one_hot(labels, self.num_seen_classes), ctx)
        solvers = [m for m in self.modules() if isinstance(m, RecursiveRidge)]
        if not all(torch.isfinite(m.weight).all() for m in solvers):  # the code's update()
            raise TrainingError("the analytic classifier is not finite: raise learner.gamma")

    def fit(self, X: torch.Tensor, Y: torch.Tensor, ctx: TaskContext) -> None:
        """Fit the task's expanded features ``X`` and targets ``Y``."""
        self.classifier.fit(X, Y, self.cfg.fit_batch_size)

    def scores(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cnn": self.classifier(self.buffer(features))}
