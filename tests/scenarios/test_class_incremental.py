"""Scenarios: task boundaries, class orders, slicing and label remapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cilkit.data.base import ImageSet
from cilkit.scenarios import ClassIncremental, resolve_class_order, task_increments


def _split(num_classes: int, per_class: int) -> ImageSet:
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = labels.to(torch.uint8)  # the label is visible in the pixels
    return ImageSet(labels, tuple(f"c{i}" for i in range(num_classes)), images=images)


def test_seeded_order_is_pycil_order():
    order = resolve_class_order(100, None, 1993)
    assert order[:10] == (68, 56, 78, 8, 23, 84, 90, 65, 74, 76)
    assert order == tuple(np.random.RandomState(1993).permutation(100))
    assert resolve_class_order(5, None, None) == (0, 1, 2, 3, 4)
    assert resolve_class_order(3, [2, 0, 1]) == (2, 0, 1)
    with pytest.raises(ValueError, match="permutation"):
        resolve_class_order(3, [0, 0, 1])


def test_increments_b0_and_b50():
    assert task_increments(100, None, 10) == (10,) * 10
    assert task_increments(100, 50, 10) == (50,) + (10,) * 5
    assert task_increments(100, 50, 5) == (50,) + (5,) * 10
    with pytest.raises(ValueError):
        task_increments(100, 50, 20)


def test_tasks_slices_and_remapping():
    split = _split(10, 3)
    order = (3, 1, 4, 0, 5, 9, 2, 6, 8, 7)
    scn = ClassIncremental(split, increment=2, initial_increment=4, class_order=order)
    assert len(scn) == 4 and scn.increments == (4, 2, 2, 2)
    t0 = scn[0]
    assert t0.info.new_classes == (0, 1, 2, 3) and t0.info.num_old_classes == 0
    assert set(t0.original_targets.tolist()) == {3, 1, 4, 0}
    # remapped id k is the k-th class of the order, original labels stay available
    assert torch.equal(scn.to_original(t0.targets), t0.original_targets)
    assert torch.equal(scn.to_remapped(t0.original_targets), t0.targets)
    t2 = scn[2]
    assert t2.info.new_classes == (6, 7) and t2.info.seen_classes == tuple(range(8))
    assert t2.info.num_old_classes == 6
    assert set(t2.original_targets.tolist()) == {2, 6}
    seen = scn[:3]
    assert seen.classes == tuple(range(8)) and len(seen) == 8 * 3
    assert seen.info.task_id == 2
    assert seen.task_classes() == [(0, 1, 2, 3), (4, 5), (6, 7)]
    assert len(scn[-1]) == 6 and scn[-1].info.task_id == 3
    assert [t.info.task_id for t in scn] == [0, 1, 2, 3]
    # images are untouched: the pixel holds the original label
    pixel = split.images[seen.indices, 0, 0, 0].long()
    assert torch.equal(pixel, seen.original_targets)


def test_scenario_is_immutable_and_indices_are_stable():
    scn = ClassIncremental(_split(4, 2), increment=2)
    a, b = scn[1], scn[1]
    assert torch.equal(a.indices, b.indices)
    with pytest.raises(AttributeError):
        a.info = None  # frozen
    with pytest.raises(IndexError):
        scn[5]
