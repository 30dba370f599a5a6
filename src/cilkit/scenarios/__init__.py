"""Scenarios: how a dataset's classes arrive as a sequence of tasks."""

from cilkit.scenarios.class_incremental import (
    ClassIncremental,
    TaskInfo,
    TaskSet,
    resolve_class_order,
    task_increments,
)
from cilkit.scenarios.long_tail import LongTailProfile, apply_long_tail

__all__ = [
    "ClassIncremental",
    "LongTailProfile",
    "TaskInfo",
    "TaskSet",
    "apply_long_tail",
    "resolve_class_order",
    "task_increments",
]
