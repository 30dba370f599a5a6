"""LwF: learning without forgetting, in its class-incremental form."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cilkit.config.schema import LearnerConfig, OptimConfig
from cilkit.contract import Batch, StageTime, StepOutput, TaskContext, TrainingStage
from cilkit.learners.base import Learner, register_learner


@dataclass(frozen=True)
class LwFConfig(LearnerConfig):
    name: str = "lwf"
    kd_temperature: float = 2.0
    """Temperature of the distillation on the old classes' logits (the paper: 2)."""
    kd_weight: float = 3.0
    """Weight of the distillation term (PyCIL's ``lamda``: 3)."""
    new_classes_only: bool = True
    """Cross-entropy over the new classes' logits only (PyCIL's class-incremental LwF)."""
    warmup_epochs: int = 0
    """Epochs of the paper's warm-up: the new classes' weights alone on frozen features, before
    the main training (0 = none, as PyCIL)."""
    warmup_lr: float = 0.01


@register_learner("lwf")
class LwF(Learner):
    """LwF (Li & Hoiem, ECCV 2016): distillation from the previous model, no exemplars.

    Li & Hoiem, "Learning without Forgetting" (ECCV 2016, TPAMI 2017).

    Class-incremental form as in PyCIL's ``lwf.py``: cross-entropy over the new classes' logits
    plus ``kd_weight`` times the softened cross-entropy (T = 2) between the old classes' logits
    and the previous model's, on the new data only. It differs from ``finetune`` by that
    distillation term alone. ``warmup_epochs`` adds the paper's warm-up, a stage before the main
    training that trains only the new classes' weights with the feature extractor frozen.
    """

    config_cls = LwFConfig
    cfg: LwFConfig
    uses_memory = False
    keeps_old_network = True

    def training_step(self, batch: Batch) -> StepOutput:
        return self.classification_with_kd(
            batch,
            self.cfg.kd_temperature,
            lambda: (1.0, self.cfg.kd_weight),
            new_only=self.cfg.new_classes_only,
        )

    def stages(self, ctx: TaskContext, when: StageTime) -> list[TrainingStage]:
        stages = super().stages(ctx, when)
        if when == "before_training" and self.cfg.warmup_epochs and self.num_old_classes:
            stages.append(self._warmup())
        return stages

    def _warmup(self) -> TrainingStage:
        network, head = self.network, self.network.head
        newest = [head.weights[-1]] + ([head.biases[-1]] if head.has_bias else [])

        def step(batch: Batch) -> StepOutput:
            with torch.no_grad():
                features = network.forward_features(batch.x)
            logits = self.new_classes_only(network.forward_head(features))
            loss = F.cross_entropy(logits.float(), batch.y)
            return StepOutput(loss, {"warmup": loss.detach()}, logits)

        return TrainingStage(
            name="warm-up of the new head",
            parameters=newest,
            epochs=self.cfg.warmup_epochs,
            optim=OptimConfig(lr=self.cfg.warmup_lr, scheduler="constant"),
            step=step,
            when="before_training",
            before_epoch=lambda epoch: network.backbone.eval(),
        )
