"""Long-tail metrics: many/medium/few-shot accuracy and the GM, HM and lowest of class recalls.

Classes are grouped by their number of training images with the convention of OLTR (Liu et al.,
CVPR 2019) and classifier decoupling (Kang et al., ICLR 2020): *many-shot* classes have more than
100 training images, *medium-shot* 20 to 100 (both included) and *few-shot* fewer than 20.

Recalls are per-class accuracies in percent. The geometric mean (GM), harmonic mean (HM) and
lowest (LR) of the class recalls measure how evenly a model serves all classes. GM and HM collapse
to zero as soon as one class has zero recall, which hides every other difference between models,
so both replace a zero (or any recall below it) by a floor, :data:`RECALL_FLOOR` = ``1e-3``
percent (``1e-5`` as a fraction) unless told otherwise; this is cilkit's convention, in the spirit
of the ``correction`` of imbalanced-learn's ``geometric_mean_score``. LR is reported as is.
Classes without test samples (recall ``None``) are left out of all three. Every function returns
plain Python values, JSON-ready.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cilkit.metrics.classification import accuracy_on, per_class_accuracy

__all__ = [
    "RECALL_FLOOR",
    "gm_recall",
    "group_accuracy",
    "hm_recall",
    "long_tail_metrics",
    "lowest_recall",
    "per_class_recall",
    "shot_groups",
]

RECALL_FLOOR = 1e-3
"""Floor (percent) that replaces zero recalls in :func:`gm_recall` and :func:`hm_recall`."""


LONG_TAIL_SCALARS = (
    "many_accuracy",
    "medium_accuracy",
    "few_accuracy",
    "gm_recall",
    "hm_recall",
    "lowest_recall",
)
"""The scalar keys of :func:`long_tail_metrics` (it also returns two per-class lists)."""


def per_class_recall(preds: Any, targets: Any, num_classes: int) -> list[float | None]:
    """Recall in percent of each class ``0 .. num_classes - 1``.

    The recall of class ``c`` is the accuracy on its test samples, so this is
    :func:`cilkit.metrics.per_class_accuracy` under the name used in long-tail work.

    Args:
        preds: predicted class ids ``(N,)`` or scores ``(N, C)``.
        targets: true class ids ``(N,)``.
        num_classes: number of classes.

    Returns:
        One recall per class, ``None`` for a class without test samples.

    Raises:
        ValueError: if a predicted or true class id is outside ``[0, num_classes)``.
    """
    return per_class_accuracy(preds, targets, num_classes)


def _counts(train_counts: Sequence[int] | Any) -> list[int]:
    if hasattr(train_counts, "detach"):  # torch tensor
        train_counts = train_counts.detach().cpu().tolist()
    counts = [int(c) for c in train_counts]
    if any(c < 0 for c in counts):
        raise ValueError("training counts must be >= 0")
    return counts


def shot_groups(
    train_counts: Sequence[int] | Any, many_threshold: int = 100, few_threshold: int = 20
) -> dict[str, list[int]]:
    """Split classes into many-, medium- and few-shot groups by their training-set size.

    With the default thresholds (OLTR / decoupling convention): many-shot ``count > 100``,
    medium-shot ``20 <= count <= 100``, few-shot ``count < 20``.

    Args:
        train_counts: number of training images of each class ``0 .. C - 1`` (a sequence or a
            tensor).
        many_threshold: classes with strictly more training images are many-shot.
        few_threshold: classes with strictly fewer training images are few-shot.

    Returns:
        ``{"many": [...], "medium": [...], "few": [...]}``, class ids in increasing order.

    Raises:
        ValueError: if ``few_threshold > many_threshold`` or a count is negative.
    """
    if few_threshold > many_threshold:
        raise ValueError(
            f"few_threshold ({few_threshold}) must not exceed many_threshold ({many_threshold})"
        )
    groups: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
    for cls, count in enumerate(_counts(train_counts)):
        if count > many_threshold:
            groups["many"].append(cls)
        elif count < few_threshold:
            groups["few"].append(cls)
        else:
            groups["medium"].append(cls)
    return groups


def group_accuracy(
    preds: Any,
    targets: Any,
    train_counts: Sequence[int] | Any,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> dict[str, float | None]:
    """Many-, medium- and few-shot accuracy in percent.

    Each is the accuracy over all test samples of the group's classes (:func:`shot_groups`),
    pooled; on a class-balanced test set this equals the mean of the group's per-class recalls.
    Predictions are not restricted to the group.

    Args:
        preds: predicted class ids ``(N,)`` or scores ``(N, C)``.
        targets: true class ids ``(N,)``; class ``c``'s training size is ``train_counts[c]``.
        train_counts: number of training images of each class.
        many_threshold: see :func:`shot_groups`.
        few_threshold: see :func:`shot_groups`.

    Returns:
        ``{"many_accuracy", "medium_accuracy", "few_accuracy"}``; a value is ``None`` when its
        group has no class or no test sample.
    """
    groups = shot_groups(train_counts, many_threshold, few_threshold)
    return {
        f"{name}_accuracy": accuracy_on(preds, targets, classes) if classes else None
        for name, classes in groups.items()
    }


def _defined(recalls: Sequence[float | None] | Any) -> list[float]:
    """The recalls that are defined (not ``None``/``NaN``), as floats."""
    if hasattr(recalls, "detach"):
        recalls = recalls.detach().cpu().tolist()
    values = [float(r) for r in recalls if r is not None]
    return [v for v in values if not math.isnan(v)]


def _floored(recalls: Sequence[float | None] | Any, floor: float) -> list[float]:
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    return [max(v, floor) for v in _defined(recalls)]


def gm_recall(recalls: Sequence[float | None] | Any, floor: float = RECALL_FLOOR) -> float | None:
    """Geometric mean of the class recalls, ``(prod_c r_c)^(1 / C)``.

    Args:
        recalls: per-class recalls in percent; ``None`` (a class without test samples) is ignored.
        floor: recalls below it, zeros in particular, count as ``floor`` percent (default
            ``1e-3`` %), so one missed class lowers the mean sharply but does not zero it.

    Returns:
        The geometric mean in percent, ``None`` when no recall is defined.
    """
    values = _floored(recalls, floor)
    if not values:
        return None
    return math.exp(math.fsum(math.log(v) for v in values) / len(values))


def hm_recall(recalls: Sequence[float | None] | Any, floor: float = RECALL_FLOOR) -> float | None:
    """Harmonic mean of the class recalls, ``C / sum_c (1 / r_c)``.

    Args:
        recalls: per-class recalls in percent; ``None`` (a class without test samples) is ignored.
        floor: recalls below it, zeros in particular, count as ``floor`` percent (default
            ``1e-3`` %).

    Returns:
        The harmonic mean in percent, ``None`` when no recall is defined.
    """
    values = _floored(recalls, floor)
    if not values:
        return None
    return len(values) / math.fsum(1.0 / v for v in values)


def lowest_recall(recalls: Sequence[float | None] | Any) -> float | None:
    """Lowest class recall in percent (no floor), ``None`` when no recall is defined.

    Args:
        recalls: per-class recalls in percent; ``None`` (a class without test samples) is ignored.
    """
    values = _defined(recalls)
    return min(values) if values else None


def long_tail_metrics(
    preds: Any,
    targets: Any,
    train_counts: Sequence[int] | Any,
    num_classes: int,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> dict[str, Any]:
    """All long-tail metrics of one evaluation pass, JSON-ready.

    Args:
        preds: predicted class ids ``(N,)`` or scores ``(N, C)``.
        targets: true class ids ``(N,)`` in ``[0, num_classes)``.
        train_counts: number of training images of each class ``0 .. num_classes - 1``.
        num_classes: number of classes.
        many_threshold: see :func:`shot_groups`.
        few_threshold: see :func:`shot_groups`.

    Returns:
        ``many_accuracy``, ``medium_accuracy``, ``few_accuracy`` (:func:`group_accuracy`),
        ``gm_recall``, ``hm_recall`` (with the default floor), ``lowest_recall``,
        ``per_class_recall`` (list, ``None`` for classes without test samples) and
        ``train_class_counts`` (list of ints).

    Raises:
        ValueError: if ``train_counts`` does not hold ``num_classes`` entries, or a class id is
            outside ``[0, num_classes)``.
    """
    counts = _counts(train_counts)
    if len(counts) != num_classes:
        raise ValueError(f"{len(counts)} training counts for {num_classes} classes")
    recalls = per_class_recall(preds, targets, num_classes)
    result: dict[str, Any] = dict(
        group_accuracy(preds, targets, counts, many_threshold, few_threshold)
    )
    result["gm_recall"] = gm_recall(recalls)
    result["hm_recall"] = hm_recall(recalls)
    result["lowest_recall"] = lowest_recall(recalls)
    result["per_class_recall"] = recalls
    result["train_class_counts"] = counts
    return result
