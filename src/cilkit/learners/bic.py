"""BiC: large-scale incremental learning with bias correction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cilkit.components.calibration import TaskBias
from cilkit.config.schema import LearnerConfig, OptimConfig
from cilkit.contract import Batch, StageTime, StepOutput, TaskContext, TrainingStage
from cilkit.learners.base import Learner, register_learner


@dataclass(frozen=True)
class BiCConfig(LearnerConfig):
    name: str = "bic"
    kd_temperature: float = 2.0
    """Temperature of the distillation on the old classes' logits."""
    val_ratio: float = 0.1
    """Share of each class's exemplar quota held out as the bias-correction split (1:9)."""
    bias_epochs: int = 170
    bias_lr: float = 0.1
    bias_milestones: tuple[int, ...] = (60, 100, 140)
    bias_weight_decay: float = 0.0
    """Weight decay on alpha and beta (PyCIL: 2e-4 on both; the authors' code: none)."""
    bias_beta_l2: float = 0.1
    """``bias_beta_l2 * beta^2 / 2`` is added to the stage's loss; alpha is left unconstrained
    (the authors' code: ``cross_entropy + gamma_l2_loss * 0.1``, gamma being the paper's beta)."""
    bias_augment: bool = False
    """Augment the held-out images in the stage (the authors' code feeds them as evaluation
    does; PyCIL augments them)."""


@register_learner("bic")
class BiC(Learner):
    """BiC (Wu et al., CVPR 2019): distillation, then a bias-correction layer for new classes.

    Wu et al., "Large Scale Incremental Learning", CVPR 2019: distillation with lambda = old /
    seen, then a bias-correction layer for the new classes' logits trained on a held-out split.
    Before each task after the first,
    ``val_ratio`` of each class's exemplar quota is held out, from the new classes' data and
    from every old class's exemplars alike (drawn with the task's generator, so a resumed task
    holds out the same samples); the rest trains with ``(1 - l) CE + l KD``, ``l = old / seen``,
    KD on the old classes' logits (T = 2) from the previous model including its corrections.
    Then a stage before ``after_task`` trains only the task's (alpha, beta) on the held-out
    split, with everything else frozen; earlier tasks' pairs are kept and applied.

    Where the paper is silent the stage follows the authors' code
    (wuyuebupt/LargeScaleIncrementalLearning, ``resnet.py``): its loss is cross-entropy on the
    corrected logits plus ``0.1 * beta^2 / 2`` (alpha unconstrained, no weight decay), and the
    held-out images come without augmentation. PyCIL's ``bic.py`` differs on all three: a
    softmax before its cross-entropy, weight decay 2e-4 on alpha and beta, augmented images.
    The stage's schedule follows PyCIL (170 epochs, lr 0.1 decayed at 60, 100, 140; the
    authors: 200 epochs decayed at 60, 120, 160, 180).
    """

    config_cls = BiCConfig
    cfg: BiCConfig
    needs_memory = True
    keeps_old_network = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bias = TaskBias()
        self.held_out = torch.zeros(0, dtype=torch.long)

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The head's logits with every task's bias correction applied."""
        return self.bias(self.network.forward_head(features), self.network.head.chunk_slices())

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        self.bias.add_task()

    def train_indices(self, ctx: TaskContext) -> torch.Tensor:
        """The task's data minus the held-out split (``self.held_out``) from the second task."""
        indices = super().train_indices(ctx)
        self.held_out = torch.zeros(0, dtype=torch.long)
        if not self.num_old_classes:
            return indices
        per_class = max(1, int(self.cfg.val_ratio * self.memory.quota(self.num_old_classes)))
        labels = ctx.train.targets_cpu[indices]
        held = []
        for c in range(self.num_seen_classes):
            members = indices[labels == c]
            pick = torch.randperm(len(members), generator=ctx.generator)[:per_class]
            held.append(members[pick])
        self.held_out = torch.cat(held).sort().values
        return indices[~torch.isin(indices, self.held_out)]

    def training_step(self, batch: Batch) -> StepOutput:
        return self.classification_with_kd(batch, self.cfg.kd_temperature, self._weights)

    def _weights(self) -> tuple[float, float]:
        lam = self.num_old_classes / self.num_seen_classes
        return 1.0 - lam, lam

    def old_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The previous model's logits with its corrections (the earlier tasks' pairs)."""
        with torch.no_grad():
            return self.bias(self.old_network(x), self.network.head.chunk_slices()[:-1])

    def stages(self, ctx: TaskContext, when: StageTime) -> list[TrainingStage]:
        stages = super().stages(ctx, when)
        if when == "after_training" and self.num_old_classes:
            stages.append(self._bias_correction())
        return stages

    def _bias_correction(self) -> TrainingStage:
        network, pair = self.network, [self.bias.alphas[-1], self.bias.betas[-1]]

        def step(batch: Batch) -> StepOutput:
            with torch.no_grad():
                features = network.forward_features(batch.x)
            logits = self.head_logits(features).float()
            ce = F.cross_entropy(logits, batch.y)
            loss = ce + self.cfg.bias_beta_l2 * pair[1].square().sum() / 2
            return StepOutput(loss, {"ce": ce.detach()}, logits)

        return TrainingStage(
            name="bias correction",
            parameters=pair,
            epochs=self.cfg.bias_epochs,
            optim=OptimConfig(
                lr=self.cfg.bias_lr,
                weight_decay=self.cfg.bias_weight_decay,
                milestones=self.cfg.bias_milestones,
            ),
            step=step,
            indices=self.held_out,
            before_epoch=lambda epoch: network.eval(),
            augment=self.cfg.bias_augment,
        )
