"""Long-tail metrics against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cilkit.metrics import (
    RECALL_FLOOR,
    gm_recall,
    group_accuracy,
    hm_recall,
    long_tail_metrics,
    lowest_recall,
    per_class_accuracy,
    per_class_recall,
    shot_groups,
)

# Four classes with 500 / 100 / 20 / 5 training images: many = {0}, medium = {1, 2}, few = {3}.
TRAIN_COUNTS = [500, 100, 20, 5]
# class 0: 3 of 4 right (75 %); class 1: 1 of 2 (50 %); class 2: 2 of 2 (100 %); class 3: 0 of 2.
TARGETS = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
PREDS = [0, 0, 0, 1, 1, 0, 2, 2, 0, 2]


def test_per_class_recall_is_per_class_accuracy() -> None:
    assert per_class_recall(PREDS, TARGETS, 4) == [75.0, 50.0, 100.0, 0.0]
    assert per_class_recall(PREDS, TARGETS, 5) == per_class_accuracy(PREDS, TARGETS, 5)
    assert per_class_recall(PREDS, TARGETS, 5)[4] is None


def test_shot_groups_at_the_thresholds() -> None:
    groups = shot_groups([101, 100, 20, 19, 0, 5000])
    assert groups == {"many": [0, 5], "medium": [1, 2], "few": [3, 4]}
    assert shot_groups(torch.tensor([101, 100, 20, 19])) == {
        "many": [0],
        "medium": [1, 2],
        "few": [3],
    }
    assert shot_groups([11, 10, 5, 4], many_threshold=10, few_threshold=5) == {
        "many": [0],
        "medium": [1, 2],
        "few": [3],
    }
    assert shot_groups([]) == {"many": [], "medium": [], "few": []}
    with pytest.raises(ValueError, match="few_threshold"):
        shot_groups([1], many_threshold=10, few_threshold=20)
    with pytest.raises(ValueError, match=">= 0"):
        shot_groups([-1])


def test_group_accuracy_hand_computed() -> None:
    acc = group_accuracy(PREDS, TARGETS, TRAIN_COUNTS)
    assert acc == {"many_accuracy": 75.0, "medium_accuracy": 75.0, "few_accuracy": 0.0}
    # pooled over samples, not averaged over classes: medium = {0, 2} = (3 + 2) / (4 + 2), not
    # (75 + 100) / 2; few = {1, 3} = (1 + 0) / (2 + 2)
    acc = group_accuracy(PREDS, TARGETS, [50, 5, 50, 5])
    assert acc["many_accuracy"] is None
    assert acc["medium_accuracy"] == pytest.approx(100.0 * 5 / 6)
    assert acc["few_accuracy"] == 25.0


def test_group_accuracy_empty_groups_are_none() -> None:
    acc = group_accuracy(PREDS, TARGETS, [500] * 4)
    assert acc == {"many_accuracy": 60.0, "medium_accuracy": None, "few_accuracy": None}
    # a group with classes but no test sample is also None
    acc = group_accuracy([0, 0], [0, 1], [500, 500, 50])
    assert acc == {"many_accuracy": 50.0, "medium_accuracy": None, "few_accuracy": None}


def test_gm_hm_lowest_without_zero() -> None:
    assert gm_recall([20.0, 80.0]) == pytest.approx(40.0)
    assert hm_recall([20.0, 80.0]) == pytest.approx(32.0)
    assert lowest_recall([20.0, 80.0]) == 20.0
    assert gm_recall([50.0, 100.0]) == pytest.approx(math.sqrt(5000.0))
    assert hm_recall([50.0, 100.0]) == pytest.approx(200.0 / 3.0)
    assert gm_recall([100.0] * 7) == pytest.approx(100.0)
    assert hm_recall([100.0] * 7) == pytest.approx(100.0)


def test_gm_hm_with_a_zero_recall_use_the_floor() -> None:
    recalls = [75.0, 50.0, 100.0, 0.0]
    assert RECALL_FLOOR == 1e-3
    assert gm_recall(recalls) == pytest.approx((75.0 * 50.0 * 100.0 * 1e-3) ** 0.25)  # 4.4006
    assert gm_recall(recalls) == pytest.approx(4.40056, rel=1e-5)
    assert hm_recall(recalls) == pytest.approx(4.0 / (1 / 75 + 1 / 50 + 1 / 100 + 1 / 1e-3))
    assert lowest_recall(recalls) == 0.0
    # a custom floor; recalls below the floor are raised to it, the others are untouched
    assert gm_recall(recalls, floor=1.0) == pytest.approx((75.0 * 50.0 * 100.0) ** 0.25)
    assert hm_recall([0.5, 2.0], floor=1.0) == pytest.approx(2.0 / (1.0 + 0.5))
    with pytest.raises(ValueError, match="floor"):
        gm_recall(recalls, floor=0.0)


def test_none_recalls_are_ignored() -> None:
    assert gm_recall([None, 20.0, 80.0, float("nan")]) == pytest.approx(40.0)
    assert hm_recall([20.0, None, 80.0]) == pytest.approx(32.0)
    assert lowest_recall([None, 30.0, 10.0]) == 10.0
    assert gm_recall([None, None]) is None
    assert hm_recall([]) is None
    assert lowest_recall([None]) is None
    assert gm_recall(torch.tensor([20.0, 80.0])) == pytest.approx(40.0)


def test_long_tail_metrics_hand_computed() -> None:
    result = long_tail_metrics(
        torch.tensor(PREDS), torch.tensor(TARGETS), torch.tensor(TRAIN_COUNTS), 4
    )
    assert set(result) == {
        "many_accuracy",
        "medium_accuracy",
        "few_accuracy",
        "gm_recall",
        "hm_recall",
        "lowest_recall",
        "per_class_recall",
        "train_class_counts",
    }
    assert result["many_accuracy"] == 75.0
    assert result["medium_accuracy"] == 75.0
    assert result["few_accuracy"] == 0.0
    assert result["gm_recall"] == pytest.approx(gm_recall([75.0, 50.0, 100.0, 0.0]))
    assert result["hm_recall"] == pytest.approx(hm_recall([75.0, 50.0, 100.0, 0.0]))
    assert result["lowest_recall"] == 0.0
    assert result["per_class_recall"] == [75.0, 50.0, 100.0, 0.0]
    assert result["train_class_counts"] == TRAIN_COUNTS
    assert json.loads(json.dumps(result)) == result  # JSON-ready


def test_long_tail_metrics_with_scores_and_missing_class() -> None:
    logits = torch.eye(3)[[0, 1, 1]]  # predictions 0, 1, 1
    result = long_tail_metrics(logits, [0, 1, 0], [200, 50, 3], 3)
    assert result["per_class_recall"] == [50.0, 100.0, None]
    assert result["few_accuracy"] is None  # class 2 has no test sample
    assert result["lowest_recall"] == 50.0
    assert result["gm_recall"] == pytest.approx(math.sqrt(5000.0))
    json.dumps(result)
    with pytest.raises(ValueError, match="training counts"):
        long_tail_metrics(logits, [0, 1, 0], [200, 50], 3)
