"""Class-incremental scenarios (continuum-style): immutable, indexable and sliceable.

``scenario[t]`` is task ``t``'s data; ``scenario[:t + 1]`` is every class seen up to task ``t``
(what a test set is evaluated on). Labels are remapped so that the ``k``-th class of
``class_order`` has id ``k``; original labels stay available.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cilkit.data.base import ImageSet


def resolve_class_order(
    num_classes: int, class_order: Sequence[int] | None = None, seed: int | None = 1993
) -> tuple[int, ...]:
    """The order of original class ids: explicit, a seeded permutation, or natural.

    The seeded permutation is ``numpy.random.RandomState(seed).permutation(num_classes)``, which
    reproduces the class order of iCaRL / PyCIL for seed 1993.
    """
    if class_order is not None:
        order = tuple(int(c) for c in class_order)
        if sorted(order) != list(range(num_classes)):
            raise ValueError(
                f"class_order must be a permutation of 0..{num_classes - 1} "
                f"({len(order)} values given)"
            )
        return order
    if seed is None:
        return tuple(range(num_classes))
    return tuple(int(c) for c in np.random.RandomState(seed).permutation(num_classes))


def task_increments(
    num_classes: int, initial_increment: int | None, increment: int
) -> tuple[int, ...]:
    """Number of new classes in each task: ``initial_increment`` then ``increment`` each."""
    first = initial_increment if initial_increment is not None else increment
    if first > num_classes:
        raise ValueError(f"the first task's {first} classes exceed the {num_classes} classes")
    rest = num_classes - first
    if rest % increment:
        raise ValueError(
            f"the {rest} classes after the first task do not split into tasks of {increment}"
        )
    return (first,) + (increment,) * (rest // increment)


@dataclass(frozen=True)
class TaskInfo:
    """What a learner knows of a task: its id and which (remapped) classes are new and seen.

    Attributes:
        task_id: 0-based task index.
        num_tasks: number of tasks in the scenario.
        new_classes: remapped ids of the classes this task brings.
        seen_classes: remapped ids of every class seen up to and including this task.
    """

    task_id: int
    num_tasks: int
    new_classes: tuple[int, ...]
    seen_classes: tuple[int, ...]

    @property
    def num_new_classes(self) -> int:
        return len(self.new_classes)

    @property
    def num_seen_classes(self) -> int:
        return len(self.seen_classes)

    @property
    def num_old_classes(self) -> int:
        return len(self.seen_classes) - len(self.new_classes)

    @property
    def old_classes(self) -> tuple[int, ...]:
        return self.seen_classes[: self.num_old_classes]

    @property
    def is_first(self) -> bool:
        return self.task_id == 0


@dataclass(frozen=True, eq=False)
class TaskSet:
    """The samples of one task (or a slice of tasks) of a scenario.

    Attributes:
        scenario: the scenario it comes from.
        info: the last task of the slice.
        classes: remapped ids of the classes the set holds.
        indices: positions of its samples in the split (int64, sorted).
        task_ids: the tasks the slice covers.
    """

    scenario: ClassIncremental
    info: TaskInfo
    classes: tuple[int, ...]
    indices: torch.Tensor
    task_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> torch.Tensor:
        """Remapped labels of the samples."""
        return self.scenario.targets[self.indices]

    @property
    def original_targets(self) -> torch.Tensor:
        """Labels as the dataset gives them."""
        return self.scenario.split.labels[self.indices]

    def task_classes(self) -> list[tuple[int, ...]]:
        """Remapped classes of each task in the slice."""
        return [self.scenario.classes_of_task(t) for t in self.task_ids]


class ClassIncremental:
    """Split a dataset split's classes into a sequence of tasks (B0 or B50 style).

    Args:
        split: the dataset split (train or test).
        initial_increment: classes in the first task; None = ``increment``.
        increment: classes in each later task.
        class_order: original class ids in the order they arrive.
    """

    def __init__(
        self,
        split: ImageSet,
        increment: int,
        initial_increment: int | None = None,
        class_order: Sequence[int] | None = None,
    ) -> None:
        num_classes = split.num_classes
        self.split = split
        self.class_order = resolve_class_order(num_classes, class_order, seed=None)
        self.increments = task_increments(num_classes, initial_increment, increment)
        remap = torch.empty(num_classes, dtype=torch.long)
        remap[torch.tensor(self.class_order)] = torch.arange(num_classes)
        targets = remap[split.labels]
        self._remap = remap
        self.targets = targets
        bounds = np.cumsum((0,) + self.increments)
        self._bounds = tuple(int(b) for b in bounds)
        self.class_names = tuple(split.class_names[c] for c in self.class_order)

    @property
    def num_tasks(self) -> int:
        return len(self.increments)

    @property
    def num_classes(self) -> int:
        return self._bounds[-1]

    def __len__(self) -> int:
        return self.num_tasks

    def classes_of_task(self, task_id: int) -> tuple[int, ...]:
        return tuple(range(self._bounds[task_id], self._bounds[task_id + 1]))

    def task_info(self, task_id: int) -> TaskInfo:
        if not 0 <= task_id < self.num_tasks:
            raise IndexError(f"task {task_id} out of range for {self.num_tasks} tasks")
        return TaskInfo(
            task_id=task_id,
            num_tasks=self.num_tasks,
            new_classes=self.classes_of_task(task_id),
            seen_classes=tuple(range(self._bounds[task_id + 1])),
        )

    def to_original(self, classes: torch.Tensor) -> torch.Tensor:
        """Original dataset ids of remapped class ids."""
        return torch.tensor(self.class_order, dtype=torch.long)[classes]

    def to_remapped(self, labels: torch.Tensor) -> torch.Tensor:
        """Remapped ids of original dataset labels."""
        return self._remap[labels]

    def __getitem__(self, key: int | slice) -> TaskSet:
        if isinstance(key, slice):
            task_ids = tuple(range(self.num_tasks)[key])
            if not task_ids:
                raise IndexError(f"empty task slice {key}")
            if task_ids != tuple(range(task_ids[0], task_ids[-1] + 1)):
                raise IndexError("task slices must be contiguous")
        else:
            task_id = key + self.num_tasks if key < 0 else key
            if not 0 <= task_id < self.num_tasks:
                raise IndexError(f"task {key} out of range for {self.num_tasks} tasks")
            task_ids = (task_id,)
        low, high = self._bounds[task_ids[0]], self._bounds[task_ids[-1] + 1]
        mask = (self.targets >= low) & (self.targets < high)
        return TaskSet(
            scenario=self,
            info=self.task_info(task_ids[-1]),
            classes=tuple(range(low, high)),
            indices=torch.nonzero(mask).flatten(),
            task_ids=task_ids,
        )

    def __iter__(self) -> Iterator[TaskSet]:
        for t in range(self.num_tasks):
            yield self[t]

    def __repr__(self) -> str:
        return (
            f"ClassIncremental({self.num_tasks} tasks, increments={list(self.increments)}, "
            f"{len(self.split)} samples)"
        )
