"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cilkit.metrics import (
    accuracy,
    accuracy_on,
    accuracy_per_task,
    average_incremental_accuracy,
    backward_transfer,
    build_accuracy_matrix,
    confusion_matrix,
    forgetting,
    forgetting_per_task,
    last_accuracy,
    old_new_accuracy,
    per_class_accuracy,
    topk_accuracy,
)

# ---------------------------------------------------------------- classification


def test_accuracy_hand_computed() -> None:
    preds = torch.tensor([0, 1, 2, 2, 1])
    targets = torch.tensor([0, 1, 1, 2, 0])
    assert accuracy(preds, targets) == pytest.approx(60.0)  # 3 of 5
    assert isinstance(accuracy(preds, targets), float)
    # numpy and lists are accepted too
    assert accuracy(np.array([1, 1]), [1, 0]) == pytest.approx(50.0)


def test_accuracy_from_logits_uses_argmax() -> None:
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(logits, torch.tensor([1, 1, 1])) == pytest.approx(200.0 / 3)


def test_accuracy_errors() -> None:
    with pytest.raises(ValueError):
        accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError):
        accuracy(torch.tensor([1, 2]), torch.tensor([1]))


def test_topk_accuracy_hand_computed() -> None:
    logits = torch.tensor(
        [
            [0.5, 0.3, 0.1, 0.05, 0.05, 0.0],  # target 1: rank 2
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # target 0: rank 6
            [0.9, 0.0, 0.0, 0.0, 0.0, 0.1],  # target 0: rank 1
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 1: rank 5
        ]
    )
    targets = torch.tensor([1, 0, 0, 1])
    assert topk_accuracy(logits, targets, 1) == pytest.approx(25.0)
    assert topk_accuracy(logits, targets, 2) == pytest.approx(50.0)
    assert topk_accuracy(logits, targets, 5) == pytest.approx(75.0)
    assert topk_accuracy(logits, targets, 6) == pytest.approx(100.0)


def test_topk_with_fewer_classes_than_k() -> None:
    logits = torch.randn(7, 3)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    assert topk_accuracy(logits, targets, 5) == pytest.approx(100.0)  # k clipped to 3
    assert topk_accuracy(logits, targets, 1) == pytest.approx(accuracy(logits, targets))
    with pytest.raises(ValueError):
        topk_accuracy(logits, targets, 0)


def test_accuracy_on_subset_and_empty() -> None:
    preds = torch.tensor([0, 1, 5, 3, 3])
    targets = torch.tensor([0, 1, 2, 3, 4])
    # class 2 predicted as 5 is wrong even though 5 is outside the subset
    assert accuracy_on(preds, targets, [1, 2]) == pytest.approx(50.0)
    assert accuracy_on(preds, targets, torch.tensor([3, 4])) == pytest.approx(50.0)
    assert accuracy_on(preds, targets, [7, 8]) is None  # no sample of these classes
    assert accuracy_on(preds, targets, []) is None  # empty class set


def test_accuracy_per_task_even_blocks() -> None:
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    preds = torch.tensor([0, 0, 2, 3, 0, 5])
    tasks = [[0, 1], [2, 3], [4, 5]]
    assert accuracy_per_task(preds, targets, tasks) == pytest.approx([50.0, 100.0, 50.0])


def test_accuracy_per_task_uneven_b50_then_10() -> None:
    # 100 fake classes, 3 samples each; B50 + 5 tasks of 10 classes.
    num_classes = 100
    targets = torch.arange(num_classes).repeat_interleave(3)
    preds = targets.clone()
    # Task 0 (classes 0-49, 150 samples): make 30 wrong -> 80%.
    preds[:30] = 99
    # Task 3 (classes 70-79, samples 210-239): make 15 of 30 wrong -> 50%.
    preds[210:225] = 0
    tasks = [list(range(50))] + [list(range(50 + 10 * i, 60 + 10 * i)) for i in range(5)]
    result = accuracy_per_task(preds, targets, tasks)
    assert result == pytest.approx([80.0, 100.0, 100.0, 50.0, 100.0, 100.0])
    # Each entry agrees with accuracy_on on the same class set.
    for value, classes in zip(result, tasks, strict=True):
        assert value == pytest.approx(accuracy_on(preds, targets, classes))


def test_accuracy_per_task_irregular_sets() -> None:
    # Non-contiguous, uneven sets, a task with no samples and one with no classes.
    targets = torch.tensor([7, 7, 3, 9, 0, 12])
    preds = torch.tensor([7, 1, 3, 3, 0, 12])
    tasks = [[7, 3], [9], [20, 21], [], [0, 12, 5]]
    # task 0: samples 7,7,3 -> 2/3; task 1: sample 9 -> 0/1; task 2: none; task 3: none;
    # task 4: samples 0, 12 -> 2/2
    assert accuracy_per_task(preds, targets, tasks) == pytest.approx(
        [200.0 / 3, 0.0, None, None, 100.0]
    )
    assert accuracy_per_task(preds, targets, []) == []
    assert accuracy_per_task(preds, targets, [[], []]) == [None, None]


def test_old_new_accuracy() -> None:
    # 5 seen classes, 3 of them old.
    targets = torch.tensor([0, 1, 2, 2, 3, 4, 4])
    preds = torch.tensor([0, 1, 4, 2, 3, 1, 0])
    old, new = old_new_accuracy(preds, targets, 3)
    assert old == pytest.approx(75.0)  # 3 of 4 old samples
    assert new == pytest.approx(100.0 / 3)  # 1 of 3 new samples
    old, new = old_new_accuracy(preds, targets, 0)  # first task: no old classes
    assert old is None
    assert new == pytest.approx(accuracy(preds, targets))
    old, new = old_new_accuracy(preds, targets, 5)  # nothing new
    assert new is None


def test_per_class_accuracy() -> None:
    targets = torch.tensor([0, 0, 1, 1, 1, 3])
    preds = torch.tensor([0, 1, 1, 1, 0, 2])
    assert per_class_accuracy(preds, targets, 4) == pytest.approx([50.0, 200.0 / 3, None, 0.0])
    with pytest.raises(ValueError):
        per_class_accuracy(preds, targets, 3)  # class 3 is out of range


def test_confusion_matrix_matches_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    num_classes = 7
    targets = torch.randint(0, num_classes, (500,), generator=gen)
    preds = torch.randint(0, num_classes, (500,), generator=gen)
    expected = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for t, p in zip(targets.tolist(), preds.tolist(), strict=True):
        expected[t, p] += 1
    cm = confusion_matrix(preds, targets, num_classes)
    assert cm.dtype == torch.long
    assert torch.equal(cm, expected)
    assert cm.sum().item() == 500
    # diagonal / row sums give per-class accuracy
    per_class = (100.0 * cm.diag() / cm.sum(1)).tolist()
    assert per_class_accuracy(preds, targets, num_classes) == pytest.approx(per_class)


def test_confusion_matrix_small_and_out_of_range() -> None:
    cm = confusion_matrix(torch.tensor([1, 1, 0]), torch.tensor([0, 1, 0]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([2]), torch.tensor([0]), 2)
    empty = confusion_matrix(
        torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 3
    )
    assert empty.shape == (3, 3) and empty.sum().item() == 0


# ---------------------------------------------------------------- incremental

# Hand-made 3-task run. A[t][j] = accuracy on task j after training task t.
#
#            task 0  task 1  task 2
#   after 0:   90      -       -
#   after 1:   70     80       -
#   after 2:   60     75      85
#
# Forgetting (Chaudhry et al.), over j < T-1 = 2:
#   f_0 = max(A[0][0], A[1][0]) - A[2][0] = max(90, 70) - 60 = 30
#   f_1 = max(A[1][1])          - A[2][1] = 80 - 75          = 5
#   F   = (30 + 5) / 2 = 17.5
# Backward transfer (Lopez-Paz & Ranzato):
#   BWT = ((A[2][0] - A[0][0]) + (A[2][1] - A[1][1])) / 2 = ((60 - 90) + (75 - 80)) / 2 = -17.5
MATRIX_NONE = [[90.0, None, None], [70.0, 80.0, None], [60.0, 75.0, 85.0]]


def test_forgetting_and_bwt_hand_computed() -> None:
    assert forgetting_per_task(MATRIX_NONE) == pytest.approx([30.0, 5.0])
    assert forgetting(MATRIX_NONE) == pytest.approx(17.5)
    assert backward_transfer(MATRIX_NONE) == pytest.approx(-17.5)


def test_forgetting_uses_max_not_first_value() -> None:
    # Task 0 improves after task 1 (60 -> 80) before dropping to 50: f_0 = 80 - 50 = 30,
    # while BWT only compares with the value just after learning it: 50 - 60 = -10.
    matrix = [[60.0], [80.0, 90.0], [50.0, 90.0, 70.0]]
    # f_1 = 90 - 90 = 0
    assert forgetting_per_task(matrix) == pytest.approx([30.0, 0.0])
    assert forgetting(matrix) == pytest.approx(15.0)
    # BWT = ((50 - 60) + (90 - 90)) / 2 = -5
    assert backward_transfer(matrix) == pytest.approx(-5.0)


@pytest.mark.parametrize(
    "matrix",
    [
        MATRIX_NONE,
        [[90.0, math.nan, math.nan], [70.0, 80.0, math.nan], [60.0, 75.0, 85.0]],
        np.array([[90.0, np.nan, np.nan], [70.0, 80.0, np.nan], [60.0, 75.0, 85.0]]),
        torch.tensor(
            [[90.0, float("nan"), float("nan")], [70.0, 80.0, float("nan")], [60.0, 75.0, 85.0]]
        ),
        [[90.0], [70.0, 80.0], [60.0, 75.0, 85.0]],  # ragged lower triangle
        [[90.0, 3.0, 1.0], [70.0, 80.0, 2.0], [60.0, 75.0, 85.0]],  # upper triangle ignored
    ],
)
def test_matrix_formats_agree(matrix: object) -> None:
    assert forgetting(matrix) == pytest.approx(17.5)
    assert backward_transfer(matrix) == pytest.approx(-17.5)
    assert forgetting_per_task(matrix) == pytest.approx([30.0, 5.0])


def test_single_task_gives_none() -> None:
    for matrix in ([[88.0]], np.array([[88.0]]), [[88.0, None]]):
        assert forgetting(matrix) is None
        assert backward_transfer(matrix) is None
        assert forgetting_per_task(matrix) == []


def test_missing_lower_entries_are_skipped() -> None:
    # A[2][1] is missing (task 1 had no test samples at the end): only task 0 counts.
    matrix = [[90.0, None, None], [70.0, 80.0, None], [60.0, None, 85.0]]
    assert forgetting_per_task(matrix) == [pytest.approx(30.0), None]
    assert forgetting(matrix) == pytest.approx(30.0)
    assert backward_transfer(matrix) == pytest.approx(-30.0)


def test_build_accuracy_matrix() -> None:
    rows = [[90.0], [70.0, 80.0], [60.0, math.nan, 85.0]]
    matrix = build_accuracy_matrix(rows)
    assert matrix == [[90.0, None, None], [70.0, 80.0, None], [60.0, None, 85.0]]
    assert all(isinstance(v, float) for row in matrix for v in row if v is not None)
    # entries for tasks not yet trained are dropped
    assert build_accuracy_matrix([[90.0, 5.0], [70.0, 80.0]]) == [[90.0, None], [70.0, 80.0]]
    assert build_accuracy_matrix([]) == []
    with pytest.raises(ValueError):
        build_accuracy_matrix([[90.0], [70.0]])  # row 1 misses task 1
    # round-trips through the matrix metrics
    assert forgetting(build_accuracy_matrix(MATRIX_NONE)) == pytest.approx(17.5)


def test_build_accuracy_matrix_from_accuracy_per_task() -> None:
    targets = torch.arange(6)
    tasks = [[0, 1], [2, 3], [4, 5]]
    rows = []
    for t, preds in enumerate(
        [torch.tensor([0, 1, 0, 0, 0, 0]), torch.tensor([0, 0, 2, 3, 0, 0]), torch.arange(6)]
    ):
        rows.append(accuracy_per_task(preds, targets, tasks[: t + 1]))
    matrix = build_accuracy_matrix(rows)
    assert matrix == [[100.0, None, None], [50.0, 100.0, None], [100.0, 100.0, 100.0]]
    assert forgetting(matrix) == pytest.approx(0.0)  # task 0: max(100, 50) - 100; task 1: 0


def test_average_incremental_and_last_accuracy() -> None:
    accs = [90.0, 80.0, 70.0, 64.0]
    assert average_incremental_accuracy(accs) == pytest.approx(76.0)  # 304 / 4
    assert last_accuracy(accs) == pytest.approx(64.0)
    assert average_incremental_accuracy([55.5]) == pytest.approx(55.5)
    assert average_incremental_accuracy(np.array(accs)) == pytest.approx(76.0)
    assert last_accuracy(torch.tensor(accs)) == pytest.approx(64.0)
    assert isinstance(average_incremental_accuracy(accs), float)
    with pytest.raises(ValueError):
        average_incremental_accuracy([])
    with pytest.raises(ValueError):
        last_accuracy([])
    with pytest.raises(ValueError):
        average_incremental_accuracy([80.0, None])  # type: ignore[list-item]


def test_results_are_json_ready() -> None:
    import json

    preds, targets = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0])
    payload = {
        "acc": accuracy(preds, targets),
        "per_task": accuracy_per_task(preds, targets, [[0], [1], [2]]),
        "old_new": old_new_accuracy(preds, targets, 1),
        "per_class": per_class_accuracy(preds, targets, 3),
        "matrix": build_accuracy_matrix([[1.0], [2.0, 3.0]]),
        "forgetting": forgetting([[1.0], [2.0, 3.0]]),
        "bwt": backward_transfer([[1.0]]),
    }
    text = json.dumps(payload, allow_nan=False)
    assert json.loads(text)["per_task"][2] is None
