"""Scenarios: how a dataset's classes arrive as a sequence of tasks."""

from cilkit.scenarios.class_incremental import (
    ClassIncremental,
    TaskInfo,
    TaskSet,
    resolve_class_order,
    task_increments,
)

__all__ = ["ClassIncremental", "TaskInfo", "TaskSet", "resolve_class_order", "task_increments"]
