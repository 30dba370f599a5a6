"""Fine-tuning: the lower bound."""

from __future__ import annotations

from dataclasses import dataclass

from cilkit.config.schema import LearnerConfig
from cilkit.contract import Batch, StepOutput
from cilkit.learners.base import Learner, register_learner


@dataclass(frozen=True)
class FinetuneConfig(LearnerConfig):
    name: str = "finetune"
    new_classes_only: bool = True
    """Cross-entropy over the new classes' logits only, with labels shifted to them (PyCIL's
    ``finetune.py`` and FACIL's fine-tuning without exemplars, whose protocol the shipped
    configs follow); false: over every seen class's logits."""


@register_learner("finetune")
class Finetune(Learner):
    """Fine-tuning on each task's data only: the lower bound.

    No exemplars and no regularisation, so old classes are forgotten almost entirely. By default
    the loss only involves the new classes' logits, as in PyCIL (``models/finetune.py``:
    ``cross_entropy(logits[:, known:], targets - known)``); ``new_classes_only: false`` trains
    over every seen class (the old classes' logits are then pushed down too).
    """

    config_cls = FinetuneConfig
    uses_memory = False
    cfg: FinetuneConfig

    def training_step(self, batch: Batch) -> StepOutput:
        if not self.cfg.new_classes_only:
            return super().training_step(batch)
        features, logits = self.forward_train(batch.x)
        loss = self.classification_loss(self.new_classes_only(logits), batch.y, features)
        return StepOutput(loss, {"cls": loss.detach()}, logits)
