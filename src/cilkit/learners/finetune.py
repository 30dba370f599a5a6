"""Fine-tuning: the lower bound."""

from __future__ import annotations

from cilkit.learners.base import Learner, register_learner


@register_learner("finetune")
class Finetune(Learner):
    """Fine-tuning on each task's data only (cross-entropy over all seen classes): the lower bound.

    No exemplars and no regularisation, so old classes are forgotten almost entirely.
    """

    uses_memory = False
