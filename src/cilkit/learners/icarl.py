"""iCaRL: incremental classifier and representation learning."""

from __future__ import annotations

from dataclasses import dataclass

from cilkit.config.schema import LearnerConfig
from cilkit.contract import Batch, StepOutput
from cilkit.learners.base import Learner, register_learner


@dataclass(frozen=True)
class ICaRLConfig(LearnerConfig):
    name: str = "icarl"
    kd_temperature: float = 2.0
    """Temperature of the distillation on the old classes' logits."""
    kd_weight: float = 1.0
    """Weight of the distillation term added to the cross-entropy."""


@register_learner("icarl")
class ICaRL(Learner):
    """iCaRL (Rebuffi et al., CVPR 2017): herding exemplars, distillation, nearest-mean classifier.

    Rebuffi et al., "iCaRL: Incremental Classifier and Representation Learning", CVPR 2017.
    As in PyCIL, the classification loss is cross-entropy over all seen classes and the
    distillation is a softened cross-entropy to the previous model on the old classes' logits;
    the memory uses herding (``memory.selection``) and the NME classifier uses the exemplars'
    class means (``accuracy_nme``, iCaRL's own classifier).
    """

    config_cls = ICaRLConfig
    needs_memory = True
    keeps_old_network = True

    def training_step(self, batch: Batch) -> StepOutput:
        return self.classification_with_kd(
            batch, self.cfg.kd_temperature, lambda: (1.0, self.cfg.kd_weight)
        )
