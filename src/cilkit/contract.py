"""The values every layer shares: a batch, a step's output, a training stage, a task's context.

This module is the bottom of the contract between the engine and the methods: the engine, the
learners and the components all import these types from here, and it imports nothing of theirs
at run time, so no layer needs another's import to describe what it hands over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from cilkit.config.schema import OptimConfig
    from cilkit.engine.data import DeviceSplit
    from cilkit.scenarios import TaskInfo

ParamGroup = dict[str, Any]
"""``{"params": [...], "lr_scale": 0.1, "weight_decay_scale": 0.0}``: parameters whose learning
rate and weight decay are the optimiser config's times these factors (default 1)."""

Parameters = Sequence[nn.Parameter | ParamGroup]
"""What an optimiser trains: parameters (the config's learning rate and weight decay) and
:data:`ParamGroup` dicts."""

Sampler = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""Maps the labels of the samples an epoch draws from to positions into them (one epoch)."""


@dataclass
class Batch:
    """One batch on the training device.

    Attributes:
        x: normalised (and, for training, augmented) images.
        y: remapped class ids.
        index: positions of the samples in the split.
        raw: the un-augmented ``uint8`` images, when the learner asks for them
            (``Learner.needs_raw_batch``; Mammoth's ``not_aug_inputs``).
        views: further independently augmented views of the same images, when the learner asks
            for them (``Learner.num_views`` > 1).
        extra: tensors a learner's ``transform_batch`` attaches for its ``training_step``
            (DER++'s replay samples drawn with the engine's generator).
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    raw: torch.Tensor | None = None
    views: tuple[torch.Tensor, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepOutput:
    """A training step's result: the loss to minimise, named terms to log, the logits."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


StageTime = Literal["before_training", "after_training", "after_task"]
"""When a stage runs in a task: before the main training (a warm-up of a new head), after it but
before ``after_task`` (BiC's bias correction, on the model that was just trained), or after
``after_task`` (balanced finetuning on the updated memory, two-stage rebalancing)."""


@dataclass
class TrainingStage:
    """An extra training stage of a task, run by the engine's one loop with its own data,
    parameters, optimiser and schedule; it checkpoints and resumes mid-stage like main training.

    Attributes:
        name: shown in the progress bar and the log; unique within a task.
        parameters: what the stage's optimiser updates: parameters, and parameter groups whose
            learning rate or weight decay is a multiple of ``optim``'s.
        epochs: number of epochs.
        optim: optimiser and schedule.
        step: the stage's loss for one batch.
        indices: training-split positions the stage trains on; None = the task's own.
        when: when in the task it runs (:data:`StageTime`).
        sampler: epoch sampler (None = shuffle).
        before_epoch: called with the epoch before each epoch (e.g. backbone to eval mode).
        start: called once before the first epoch of a fresh stage, not when the stage resumes
            from a mid-stage checkpoint (e.g. to re-initialise the classifier for cRT).
        finish: called after the last epoch (e.g. to fold learned scales into the head).
        state: a module holding the stage's own trainable state (parameters that are not the
            learner's), saved with mid-stage checkpoints and loaded on resume.
        augment: draw training augmentation for the stage's batches; False hands ``step`` the
            images as evaluation sees them (BiC's bias correction on its held-out split).
        features: a frozen module (no trainable parameter) whose output on the batch's images
            ``step`` reads as ``batch.extra["features"]`` (a head-only stage on a frozen
            network). Each image's features are computed once while the module's values hold,
            not once per epoch. Only for stages without augmentation (``augment=False``).
    """

    name: str
    parameters: Parameters
    epochs: int
    optim: OptimConfig
    step: Callable[[Batch], StepOutput]
    indices: torch.Tensor | None = None
    when: StageTime = "after_task"
    sampler: Sampler | None = None
    before_epoch: Callable[[int], None] | None = None
    start: Callable[[], None] | None = None
    finish: Callable[[], None] | None = None
    state: nn.Module | None = None
    augment: bool = True
    features: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.features is not None and self.augment:
            raise ValueError(f"stage '{self.name}': cached features need augment=False")


@dataclass
class TaskContext:
    """What the engine hands a learner's task hooks.

    Attributes:
        info: the task (id, new and seen classes).
        train: the whole training split on the device (only use the allowed samples!).
        generator: CPU generator for the learner's random choices in this task. It is derived
            from the run's seed and the task id, so the same choices are made when a task is
            resumed from a mid-task checkpoint.
        batch_size: evaluation batch size for feature extraction.
        indices: the training-split positions the task trains on (set by the engine from
            ``Learner.train_indices`` before training).
        amp: the run's autocast dtype (``engine.amp``), None for full precision; the feature
            passes of herding, class means and imprinting (``Learner.features_fn``) run under it.
    """

    info: TaskInfo
    train: DeviceSplit
    generator: torch.Generator
    batch_size: int = 512
    indices: torch.Tensor | None = None
    amp: torch.dtype | None = None

    def class_indices(self, c: int) -> torch.Tensor:
        """Training-split positions of remapped class ``c``."""
        return self.train.indices_of([c])

    def new_indices(self) -> torch.Tensor:
        """Training-split positions of this task's new classes."""
        return self.train.indices_of(self.info.new_classes)

    def seen_indices(self) -> torch.Tensor:
        """Training-split positions of every class seen so far (joint training only)."""
        return self.train.indices_of(self.info.seen_classes)


def task_generator(seed: int, task_id: int) -> torch.Generator:
    """A CPU generator for task ``task_id`` of a run seeded ``seed``, the same at every start of
    the task (a resumed task makes the same random choices)."""
    import numpy as np

    state = np.random.SeedSequence([seed, task_id, 0x7A5C]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
