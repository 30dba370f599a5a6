"""Metrics over a whole incremental run: average incremental accuracy, forgetting, BWT.

The accuracy matrix ``A`` is ``T x T`` with ``A[t][j]`` the accuracy (percent) on the classes of
task ``j`` after training task ``t`` (tasks are numbered from 0). Entries with ``j > t`` (tasks not
yet seen) are ignored: they may be ``None``, ``NaN`` or any number, and rows may be ragged (row
``t`` holding only ``t + 1`` entries). Matrices may be nested lists, numpy arrays or tensors.

A missing lower-triangle entry (``None`` or ``NaN``, e.g. a task without test samples) makes the
per-task terms that need it undefined; averages are taken over the defined terms only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "average_incremental_accuracy",
    "backward_transfer",
    "build_accuracy_matrix",
    "forgetting",
    "forgetting_per_task",
    "last_accuracy",
]


def _as_float(value: Any) -> float:
    """``value`` as a float, ``NaN`` for ``None``."""
    return math.nan if value is None else float(value)


def _as_matrix(matrix: Any) -> np.ndarray:
    """The lower triangle of ``matrix`` as a square float array, ``NaN`` elsewhere or missing.

    The size is the number of rows ``T``; columns ``j >= T`` are upper-triangle entries and are
    dropped.
    """
    if hasattr(matrix, "detach"):  # torch tensor
        matrix = matrix.detach().cpu().numpy()
    rows = list(matrix)
    size = len(rows)
    out = np.full((size, size), np.nan)
    for t, row in enumerate(rows):
        values = np.asarray(row, dtype=object)
        if values.ndim != 1:
            raise ValueError(f"row {t} of the accuracy matrix is not a flat sequence of numbers")
        for j in range(min(t + 1, len(values))):
            out[t, j] = _as_float(values[j])
    return out


def _as_vector(accuracies: Any) -> list[float]:
    if hasattr(accuracies, "detach"):
        accuracies = accuracies.detach().cpu().numpy()
    values = [_as_float(a) for a in np.asarray(accuracies, dtype=object).reshape(-1)]
    if not values:
        raise ValueError("no accuracies given")
    if any(math.isnan(v) for v in values):
        raise ValueError(f"accuracies must all be numbers, got {values}")
    return values


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def build_accuracy_matrix(rows: Sequence[Sequence[float | None]]) -> list[list[float | None]]:
    """The ``T x T`` accuracy matrix from per-task evaluation rows, JSON-ready.

    Args:
        rows: ``rows[t]`` holds the accuracies on tasks ``0 .. t`` after training task ``t`` (for
            example the output of :func:`cilkit.metrics.accuracy_per_task`). Entries for later
            tasks, if any, are discarded.

    Returns:
        A list of ``T`` lists of ``T`` entries: ``rows[t][j]`` as a float for ``j <= t`` (``None``
        where it is ``None`` or ``NaN``), ``None`` for ``j > t``.

    Raises:
        ValueError: if row ``t`` holds fewer than ``t + 1`` entries.
    """
    size = len(rows)
    matrix: list[list[float | None]] = []
    for t, row in enumerate(rows):
        if len(row) < t + 1:
            raise ValueError(
                f"row {t} of the accuracy matrix has {len(row)} entries, expected at least {t + 1}"
            )
        values = [_as_float(row[j]) for j in range(t + 1)]
        matrix.append([None if math.isnan(v) else v for v in values] + [None] * (size - t - 1))
    return matrix


def average_incremental_accuracy(accuracies: Sequence[float]) -> float:
    """Average incremental accuracy (Rebuffi et al., iCaRL, CVPR 2017; as reported by PyCIL).

    ``AIA = (1 / T) * sum_{t=0}^{T-1} a_t`` where ``a_t`` is the accuracy on all classes seen so
    far, measured after training task ``t``.

    Args:
        accuracies: ``a_0 .. a_{T-1}`` in percent.

    Returns:
        The mean, in percent.

    Raises:
        ValueError: if ``accuracies`` is empty or holds ``None``/``NaN``.
    """
    values = _as_vector(accuracies)
    return sum(values) / len(values)


def last_accuracy(accuracies: Sequence[float]) -> float:
    """Accuracy on all classes after the last task, ``a_{T-1}``.

    Args:
        accuracies: ``a_0 .. a_{T-1}`` in percent.

    Returns:
        The last entry, in percent.

    Raises:
        ValueError: if ``accuracies`` is empty or holds ``None``/``NaN``.
    """
    return _as_vector(accuracies)[-1]


def forgetting_per_task(matrix: Any) -> list[float | None]:
    """Forgetting of each task but the last (Chaudhry et al., Riemannian Walk, ECCV 2018).

    ``f_j = max_{t in [j, T-2]} A[t][j] - A[T-1][j]`` for ``j = 0 .. T-2``: how far the accuracy
    on task ``j`` has dropped from its best value before the last task. It is usually positive;
    a negative value means the task improved.

    Args:
        matrix: the ``T x T`` accuracy matrix (see the module docstring).

    Returns:
        ``[f_0, .., f_{T-2}]`` in percentage points (empty when ``T == 1``); ``f_j`` is ``None``
        when ``A[T-1][j]`` or every ``A[t][j]``, ``t in [j, T-2]``, is missing.
    """
    a = _as_matrix(matrix)
    last = a.shape[0] - 1
    result: list[float | None] = []
    for j in range(last):
        before = a[j:last, j]
        before = before[~np.isnan(before)]
        if before.size == 0 or np.isnan(a[last, j]):
            result.append(None)
        else:
            result.append(float(before.max() - a[last, j]))
    return result


def forgetting(matrix: Any) -> float | None:
    """Average forgetting (Chaudhry et al., Riemannian Walk, ECCV 2018).

    ``F = (1 / (T-1)) * sum_{j=0}^{T-2} (max_{t in [j, T-2]} A[t][j] - A[T-1][j])``; see
    :func:`forgetting_per_task` for the per-task terms.

    Args:
        matrix: the ``T x T`` accuracy matrix (see the module docstring).

    Returns:
        ``F`` in percentage points, averaged over the defined terms; ``None`` when ``T == 1`` (or
        no term is defined).
    """
    return _mean(forgetting_per_task(matrix))


def backward_transfer(matrix: Any) -> float | None:
    """Backward transfer (Lopez-Paz & Ranzato, Gradient Episodic Memory, NeurIPS 2017).

    ``BWT = (1 / (T-1)) * sum_{j=0}^{T-2} (A[T-1][j] - A[j][j])``: the change in accuracy on each
    earlier task between just after learning it and the end. Negative values mean forgetting.

    Args:
        matrix: the ``T x T`` accuracy matrix (see the module docstring).

    Returns:
        ``BWT`` in percentage points, averaged over the terms whose two entries are defined;
        ``None`` when ``T == 1`` (or no term is defined).
    """
    a = _as_matrix(matrix)
    last = a.shape[0] - 1
    terms = [float(a[last, j] - a[j, j]) for j in range(last)]
    return _mean([None if math.isnan(v) else v for v in terms])
