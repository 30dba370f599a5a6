"""Learners: the Learner contract and one small file per method, registered by import."""

from cilkit.learners import finetune, icarl, joint, replay, wa  # noqa: F401  (registration)
from cilkit.learners.base import (
    LEARNERS,
    Learner,
    StepOutput,
    TaskContext,
    create_learner,
    register_learner,
)

__all__ = [
    "LEARNERS",
    "Learner",
    "StepOutput",
    "TaskContext",
    "create_learner",
    "register_learner",
]
