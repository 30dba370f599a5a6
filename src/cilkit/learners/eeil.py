"""EEIL: end-to-end incremental learning."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cilkit.config.schema import LearnerConfig, OptimConfig
from cilkit.contract import Batch, StageTime, StepOutput, TaskContext, TrainingStage
from cilkit.learners.base import Learner, register_learner
from cilkit.losses import kd_loss


@dataclass(frozen=True)
class EEILConfig(LearnerConfig):
    name: str = "eeil"
    kd_temperature: float = 2.0
    finetune_epochs: int = 40
    """Epochs of the balanced finetuning stage (PyCIL: 40)."""
    finetune_lr: float = 0.01
    finetune_milestones: tuple[int, ...] = (10, 20)
    finetune_weight_decay: float = 1e-3


def cross_distillation(
    logits: torch.Tensor, teacher: torch.Tensor, blocks: list[slice], temperature: float
) -> torch.Tensor:
    """The sum over tasks of the softened cross-entropy on each task's block of logits."""
    return sum(kd_loss(logits[:, b], teacher[:, b], temperature) for b in blocks)


@register_learner("eeil")
class EEIL(Learner):
    """EEIL (Castro et al., ECCV 2018): cross-distillation, then balanced finetuning.

    Castro et al., "End-to-End Incremental Learning".

    Training: cross-entropy over every seen class plus, for each earlier task, the distillation
    (T = 2) of that task's block of logits from the previous model (the cross-distilled loss; the
    authors' code sums one term per task, PyCIL's ``end2end.py`` uses a binary cross-entropy
    between the softened outputs instead). After ``after_task`` has filled the memory with an
    equal share of every class (the new ones included), a stage finetunes the whole network on
    that class-balanced memory with the same loss, distilling every task's block, the new one
    included, from a copy of the model taken before the stage (PyCIL's schedule: 40 epochs,
    lr 0.01 at [10, 20], weight decay 1e-3). The paper's gradient noise and extra augmentation
    are left out.
    """

    config_cls = EEILConfig
    cfg: EEILConfig
    needs_memory = True
    keeps_old_network = True

    def training_step(self, batch: Batch) -> StepOutput:
        features, logits = self.forward_train(batch.x)
        ce = self.classification_loss(logits, batch.y, features)
        if self.old_network is None:
            return StepOutput(ce, {"ce": ce.detach()}, logits)
        blocks = self.network.head.chunk_slices()[:-1]
        kd = cross_distillation(logits, self.old_logits(batch.x), blocks, self.cfg.kd_temperature)
        return StepOutput(ce + kd, {"ce": ce.detach(), "kd": kd.detach()}, logits)

    def stages(self, ctx: TaskContext, when: StageTime) -> list[TrainingStage]:
        stages = super().stages(ctx, when)
        if when == "after_task" and self.num_old_classes:
            stages.append(self._balanced_finetuning())
        return stages

    def _balanced_finetuning(self) -> TrainingStage:
        network = self.network
        teacher = network.copy_frozen()  # the model before finetuning, saved with the stage
        blocks = network.head.chunk_slices()

        def step(batch: Batch) -> StepOutput:
            features, logits = self.forward_train(batch.x)
            ce = self.classification_loss(logits, batch.y, features)
            with torch.no_grad():
                target = teacher(batch.x)
            kd = cross_distillation(logits, target, blocks, self.cfg.kd_temperature)
            return StepOutput(ce + kd, {"ce": ce.detach(), "kd": kd.detach()}, logits)

        return TrainingStage(
            name="balanced finetuning",
            parameters=[p for p in network.parameters() if p.requires_grad],
            epochs=self.cfg.finetune_epochs,
            optim=OptimConfig(
                lr=self.cfg.finetune_lr,
                weight_decay=self.cfg.finetune_weight_decay,
                milestones=self.cfg.finetune_milestones,
            ),
            step=step,
            indices=self.memory.indices(),
            state=teacher,
            finish=self._keep_finetuned_teacher,
        )

    def _keep_finetuned_teacher(self) -> None:
        """The next task distils from the finetuned model (as the authors' and PyCIL's code)."""
        self.old_network = self.network.copy_frozen()
