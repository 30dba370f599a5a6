"""Joint training on all seen classes: the upper bound."""

from __future__ import annotations

import torch

from cilkit.contract import TaskContext
from cilkit.learners.base import Learner, register_learner


@register_learner("joint")
class Joint(Learner):
    """Joint training on every seen class's full data at each task: the upper bound.

    Not a continual method (it keeps all old data); the reference a CIL method is measured
    against.
    """

    uses_memory = False

    def train_indices(self, ctx: TaskContext) -> torch.Tensor:
        return ctx.seen_indices()
