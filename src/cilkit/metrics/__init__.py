"""Metrics as pure functions: per-evaluation classification, long-tail and whole-run CIL metrics.

Accuracies are percentages in ``[0, 100]``; every function returns plain Python values (except
:func:`confusion_matrix`, a tensor) so results can be written to JSON directly.
"""

from __future__ import annotations

from cilkit.metrics.classification import (
    accuracy,
    accuracy_on,
    accuracy_per_task,
    confusion_matrix,
    old_new_accuracy,
    per_class_accuracy,
    topk_accuracy,
)
from cilkit.metrics.incremental import (
    average_incremental_accuracy,
    backward_transfer,
    build_accuracy_matrix,
    forgetting,
    forgetting_per_task,
    last_accuracy,
)
from cilkit.metrics.long_tail import (
    LONG_TAIL_SCALARS,
    RECALL_FLOOR,
    gm_recall,
    group_accuracy,
    hm_recall,
    long_tail_metrics,
    lowest_recall,
    per_class_recall,
    shot_groups,
)

__all__ = [
    "LONG_TAIL_SCALARS",
    "RECALL_FLOOR",
    "accuracy",
    "accuracy_on",
    "accuracy_per_task",
    "average_incremental_accuracy",
    "backward_transfer",
    "build_accuracy_matrix",
    "confusion_matrix",
    "forgetting",
    "forgetting_per_task",
    "gm_recall",
    "group_accuracy",
    "hm_recall",
    "last_accuracy",
    "long_tail_metrics",
    "lowest_recall",
    "old_new_accuracy",
    "per_class_accuracy",
    "per_class_recall",
    "shot_groups",
    "topk_accuracy",
]
