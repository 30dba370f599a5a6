"""Classification metrics on one evaluation pass: accuracies, per-task/per-class splits, confusion.

Every function takes predictions and targets as torch tensors (or anything ``torch.as_tensor``
accepts: numpy arrays, lists) and returns plain Python values, so results are JSON-ready.
Accuracies are percentages in ``[0, 100]``. Predictions may be class ids of shape ``(N,)`` or
scores/logits of shape ``(N, C)``, which are reduced with ``argmax``. Targets are class ids in the
remapped incremental order ``0 .. num_seen - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "accuracy",
    "accuracy_on",
    "accuracy_per_task",
    "confusion_matrix",
    "old_new_accuracy",
    "per_class_accuracy",
    "topk_accuracy",
]


def _labels(x: Any, name: str) -> torch.Tensor:
    """``x`` as an int64 tensor ``(N,)`` of class ids (``argmax`` of ``(N, C)`` scores)."""
    t = torch.as_tensor(x)
    if t.ndim == 2:
        t = t.argmax(dim=1)
    elif t.ndim == 0:
        t = t.reshape(1)
    elif t.ndim != 1:
        raise ValueError(f"{name} must have shape (N,) or (N, C), got {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
    return t.long()


def _pair(preds: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true class ids as int64 ``(N,)`` tensors on the targets' device."""
    t = _labels(targets, "targets")
    p = _labels(preds, "preds").to(t.device)
    if p.shape != t.shape:
        raise ValueError(f"{p.numel()} predictions but {t.numel()} targets")
    return p, t


def _class_tensor(classes: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(classes, dtype=torch.long, device=device).reshape(-1)


def _percent(hits: int | float, count: int | float) -> float | None:
    return 100.0 * float(hits) / float(count) if count else None


def accuracy(preds: Any, targets: Any) -> float:
    """Top-1 accuracy in percent.

    Args:
        preds: predicted class ids ``(N,)`` or scores ``(N, C)``.
        targets: true class ids ``(N,)``.

    Returns:
        ``100 * mean(preds == targets)``.

    Raises:
        ValueError: if there are no samples or the shapes disagree.
    """
    p, t = _pair(preds, targets)
    if t.numel() == 0:
        raise ValueError("accuracy of an empty set of samples is undefined")
    return 100.0 * (p == t).double().mean().item()


def topk_accuracy(logits: Any, targets: Any, k: int) -> float:
    """Top-``k`` accuracy in percent: the target is among the ``k`` highest scores.

    Args:
        logits: scores ``(N, C)``.
        targets: true class ids ``(N,)``.
        k: number of guesses; clipped to ``C`` (top-5 on 3 classes is top-3, i.e. 100%).

    Returns:
        The percentage of samples whose target is in their top-``k`` classes.

    Raises:
        ValueError: if ``k < 1``, there are no samples or the shapes disagree.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = torch.as_tensor(logits)
    t = _labels(targets, "targets").to(scores.device)
    if scores.ndim != 2 or scores.shape[0] != t.numel():
        raise ValueError(
            f"logits must have shape (N, C) with N = {t.numel()} targets, got {tuple(scores.shape)}"
        )
    if t.numel() == 0:
        raise ValueError("accuracy of an empty set of samples is undefined")
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return 100.0 * (top == t[:, None]).any(dim=1).double().mean().item()


def accuracy_on(preds: Any, targets: Any, classes: Sequence[int] | torch.Tensor) -> float | None:
    """Accuracy in percent on the samples whose target is in ``classes``.

    Predictions are not restricted to ``classes``: a sample of class 3 predicted as class 7 is an
    error even when 7 is not in ``classes`` (class-incremental, not task-incremental, accuracy).

    Args:
        preds: predicted class ids ``(N,)`` or scores ``(N, C)``.
        targets: true class ids ``(N,)``.
        classes: the class ids to evaluate on.

    Returns:
        The accuracy, or ``None`` when no sample belongs to ``classes``.
    """
    p, t = _pair(preds, targets)
    mask = torch.isin(t, _class_tensor(classes, t.device))
    hits, count = torch.stack([(p == t)[mask].sum(), mask.sum()]).tolist()
    return _percent(hits, count)


def accuracy_per_task(
    preds: Any, targets: Any, task_classes: Sequence[Sequence[int]]
) -> list[float | None]:
    """Accuracy in percent on each task's class set.

    Works for any split of the classes (B50 then 10 per task, uneven or even overlapping sets):
    membership is looked up per class, never derived from fixed-size blocks of ids.

    Args:
        preds: predicted class ids ``(N,)`` or scores ``(N, C)``.
        targets: true class ids ``(N,)``.
        task_classes: ``task_classes[j]`` holds the class ids of task ``j``.

    Returns:
        One accuracy per task, ``None`` for a task without samples.
    """
    p, t = _pair(preds, targets)
    sets = [torch.as_tensor(c, dtype=torch.long).reshape(-1) for c in task_classes]
    sets = [s[s >= 0].to(t.device) for s in sets]
    largest = max((int(s.max()) for s in sets if s.numel()), default=-1)
    if largest < 0:  # no task holds any class
        return [None] * len(sets)
    member = torch.zeros(len(sets), largest + 1, dtype=torch.bool, device=t.device)
    for j, s in enumerate(sets):
        member[j, s] = True
    known = (t >= 0) & (t <= largest)  # other targets belong to no task
    in_task = member[:, t.clamp(0, largest)] & known  # (T, N): sample i belongs to task j
    counts = in_task.sum(dim=1)
    hits = (in_task & (p == t)).sum(dim=1)
    return [_percent(h, c) for h, c in zip(hits.tolist(), counts.tolist(), strict=True)]


def old_new_accuracy(
    preds: Any, targets: Any, num_old_classes: int
) -> tuple[float | None, float | None]:
    """Accuracy in percent on old and on new classes.

    Classes are in the remapped incremental order, so the old classes are ``0 ..
    num_old_classes - 1`` and the new ones are ``num_old_classes ..``.

    Args:
        preds: predicted class ids ``(N,)`` or scores ``(N, C)``.
        targets: true class ids ``(N,)``.
        num_old_classes: number of classes learned before the current task.

    Returns:
        ``(old, new)``; either is ``None`` when it has no samples (``old`` after the first task).
    """
    p, t = _pair(preds, targets)
    old = t < num_old_classes
    correct = p == t
    old_hits, old_count, new_hits, new_count = torch.stack(
        [(correct & old).sum(), old.sum(), (correct & ~old).sum(), (~old).sum()]
    ).tolist()
    return _percent(old_hits, old_count), _percent(new_hits, new_count)


def _check_range(p: torch.Tensor, t: torch.Tensor, num_classes: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if t.numel() == 0:
        return
    lo, hi = torch.stack(
        [torch.minimum(p.min(), t.min()), torch.maximum(p.max(), t.max())]
    ).tolist()
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"class ids must lie in [0, {num_classes}), found ids in [{lo}, {hi}]")


def per_class_accuracy(preds: Any, targets: Any, num_classes: int) -> list[float | None]:
    """Accuracy in percent on each class ``0 .. num_classes - 1``.

    Args:
        preds: predicted class ids ``(N,)`` or scores ``(N, C)``.
        targets: true class ids ``(N,)``.
        num_classes: number of classes.

    Returns:
        One accuracy per class, ``None`` for a class without samples.

    Raises:
        ValueError: if a predicted or true class id is outside ``[0, num_classes)``.
    """
    p, t = _pair(preds, targets)
    _check_range(p, t, num_classes)
    counts = torch.bincount(t, minlength=num_classes)
    hits = torch.bincount(t[p == t], minlength=num_classes)
    return [_percent(h, c) for h, c in zip(hits.tolist(), counts.tolist(), strict=True)]


def confusion_matrix(preds: Any, targets: Any, num_classes: int) -> torch.Tensor:
    """Confusion matrix counted with one ``bincount``.

    Args:
        preds: predicted class ids ``(N,)`` or scores ``(N, C)``.
        targets: true class ids ``(N,)``.
        num_classes: number of classes.

    Returns:
        An int64 tensor ``(num_classes, num_classes)`` on the targets' device whose entry
        ``[i, j]`` counts the samples of true class ``i`` predicted as class ``j``.

    Raises:
        ValueError: if a predicted or true class id is outside ``[0, num_classes)``.
    """
    p, t = _pair(preds, targets)
    _check_range(p, t, num_classes)
    flat = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)
