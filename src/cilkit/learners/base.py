"""The Learner contract: hooks the engine calls; the engine owns the loop, backward and step.

A method subclasses :class:`Learner` (or another learner) and overrides only what differs:

- ``before_task(ctx)``: grow the head (default), freeze parts, set up task state.
- ``train_indices(ctx)``: which training samples this task trains on (default: the new classes
  plus the exemplar memory).
- ``training_step(batch)``: a loss (plus named terms) for one batch; no backward, no step.
- ``after_step()``: after each optimiser step (e.g. weight clipping).
- ``after_task(ctx)``: after training (default: keep the old model if asked, update the memory
  and the class means).
- ``predict(x)``: scores per classifier, e.g. ``{"cnn": logits, "nme": -distances}``.

Everything kept across tasks is a registered parameter or buffer, or in ``extra_state``, so it is
saved with the learner's ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from cilkit.backbones import IncrementalNet
from cilkit.buffers.memory import ExemplarMemory
from cilkit.buffers.selection import class_means, nme_logits
from cilkit.components.rebalance import TwoStageRebalance
from cilkit.config.schema import LearnerConfig, MemoryConfig, OptimConfig
from cilkit.engine.data import Batch, DeviceSplit
from cilkit.losses import create_loss
from cilkit.registry import Registry
from cilkit.scenarios import TaskInfo


@dataclass
class TaskContext:
    """What the engine hands a learner's task hooks.

    Attributes:
        info: the task (id, new and seen classes).
        train: the whole training split on the device (only use the allowed samples!).
        generator: CPU generator for the learner's random choices (saved for resume).
        batch_size: evaluation batch size for feature extraction.
    """

    info: TaskInfo
    train: DeviceSplit
    generator: torch.Generator
    batch_size: int = 512

    def class_indices(self, c: int) -> torch.Tensor:
        """Training-split positions of remapped class ``c``."""
        return self.train.indices_of([c])

    def new_indices(self) -> torch.Tensor:
        """Training-split positions of this task's new classes."""
        return self.train.indices_of(self.info.new_classes)

    def seen_indices(self) -> torch.Tensor:
        """Training-split positions of every class seen so far (joint training only)."""
        return self.train.indices_of(self.info.seen_classes)


@dataclass
class TrainingStage:
    """An extra training stage after a task's main training (e.g. class-balanced rebalancing),
    run by the engine's loop with its own parameters, sampler and schedule.

    Attributes:
        name: shown in the progress bar.
        parameters: what the stage's optimiser updates: parameters, and parameter groups
            (``{"params": [...], "lr_scale": 0.1}``) whose learning rate or weight decay is a
            multiple of ``optim``'s.
        epochs: number of epochs.
        optim: optimiser and schedule.
        step: the stage's loss for one batch.
        sampler: epoch sampler (None = shuffle).
        before_epoch: called with the epoch before each epoch (e.g. backbone to eval mode).
        finish: called after the last epoch (e.g. to fold a learned scale into the head).
    """

    name: str
    parameters: list[nn.Parameter | dict]
    epochs: int
    optim: OptimConfig
    step: Callable[[Batch], StepOutput]
    sampler: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    before_epoch: Callable[[int], None] | None = None
    finish: Callable[[], None] | None = None


@dataclass
class StepOutput:
    """A training step's result: the loss to minimise, named terms to log, the logits."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


class Learner(nn.Module):
    """Fine-tuning with cross-entropy over all seen classes: the base every method extends.

    Args:
        cfg: this learner's config.
        network: backbone plus expandable head.
        memory_cfg: exemplar memory config (disabled unless a budget is set).
    """

    config_cls: ClassVar[type[LearnerConfig]] = LearnerConfig
    needs_memory: ClassVar[bool] = False
    """The method cannot run without an exemplar memory."""
    uses_memory: ClassVar[bool] = True
    """The method trains on exemplars when a memory is configured."""
    keeps_old_network: ClassVar[bool] = False
    """Keep a frozen copy of the network after each task (``self.old_network``)."""

    def __init__(self, cfg: LearnerConfig, network: IncrementalNet, memory_cfg: MemoryConfig):
        super().__init__()
        self.cfg = cfg
        self.network = network
        self.loss_fn = create_loss(cfg.loss)
        self.rebalancer = TwoStageRebalance(cfg.rebalance) if cfg.rebalance else None
        self.memory = ExemplarMemory(memory_cfg) if memory_cfg.enabled else None
        self.old_network: IncrementalNet | None = None
        self.register_buffer("class_means", torch.zeros(0, network.feature_dim))
        self.num_old_classes = 0
        self.num_seen_classes = 0

    # ---- hooks -------------------------------------------------------------------------------
    def before_task(self, ctx: TaskContext) -> None:
        """Grow the head by the task's new classes."""
        self.num_old_classes = ctx.info.num_old_classes
        self.num_seen_classes = ctx.info.num_seen_classes
        self.network.expand(ctx.info.num_new_classes)

    def train_indices(self, ctx: TaskContext) -> torch.Tensor:
        """The new classes' samples plus the exemplar memory."""
        new = ctx.new_indices()
        if self.memory is None or not len(self.memory):
            return new
        return torch.cat([new, self.memory.indices()])

    def before_training(self, ctx: TaskContext, indices: torch.Tensor) -> None:
        """Before the first epoch: tell the loss the class counts of the data it trains on."""
        counts = torch.bincount(ctx.train.targets_cpu[indices], minlength=self.num_seen_classes)
        self.loss_fn.set_class_counts(counts)

    def before_epoch(self, epoch: int, epochs: int) -> None:
        """Before each epoch (deferred re-weighting, curricula)."""
        self.loss_fn.set_epoch(epoch, epochs)

    def training_step(self, batch: Batch) -> StepOutput:
        """The classification loss (``learner.loss``, cross-entropy by default) over every seen
        class."""
        features, logits = self.forward_train(batch.x)
        loss = self.classification_loss(logits, batch.y, features)
        return StepOutput(loss, {"cls": loss.detach()}, logits)

    def after_step(self) -> None:
        """Called after each optimiser step."""

    def stages(self, ctx: TaskContext, indices: torch.Tensor) -> list[TrainingStage]:
        """Extra training stages after ``after_task`` (two-stage rebalancing when configured)."""
        if self.rebalancer is None:
            return []
        return [self.rebalancer.stage(self, ctx)]

    def after_task(self, ctx: TaskContext) -> None:
        """Keep the old network if asked; update the exemplar memory and class means."""
        if self.keeps_old_network:
            self.old_network = self.network.copy_frozen()
        if self.memory is not None:
            self.update_memory(ctx)
            self.update_class_means(ctx)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """CNN logits, and nearest-mean-of-exemplars scores when class means exist."""
        features = self.network.forward_features(x)
        logits = self.network.forward_head(features)
        if self.rebalancer is not None:
            logits = self.rebalancer.apply(logits)  # LWS scales act at evaluation only
        out = {"cnn": self.loss_fn.adjust_logits(logits)}
        if len(self.class_means) == self.num_seen_classes and self.num_seen_classes:
            out["nme"] = nme_logits(features.float(), self.class_means)
        return out

    def frozen_modules(self) -> list[nn.Module]:
        """Parts that stay in eval mode whatever mode the learner is put in: the frozen teacher
        (``old_network``) normalises with its running statistics and never updates them, as in
        PyCIL, FACIL and Liu et al."""
        return [self.old_network] if self.old_network is not None else []

    def train(self, mode: bool = True) -> Learner:
        """Set the training mode of everything but :meth:`frozen_modules`, which stay in eval."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def parameters_to_optimize(self) -> list[nn.Parameter]:
        """Parameters the engine's optimiser updates this task."""
        return [p for p in self.network.parameters() if p.requires_grad]

    # ---- shared helpers ------------------------------------------------------------------------
    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits of the network being trained."""
        features = self.network.forward_features(x)
        return features, self.network.forward_head(features)

    def classification_loss(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The configured classification loss (``learner.loss``)."""
        return self.loss_fn(logits, targets, features if self.loss_fn.needs_features else None)

    def features_fn(self, ctx: TaskContext, flip: bool = False):
        """Feature extractor over training-split positions, in eval mode."""

        def fn(indices: torch.Tensor) -> torch.Tensor:
            was_training = self.network.training
            self.network.eval()
            try:
                return ctx.train.embed(
                    indices, self.network.forward_features, ctx.batch_size, flip=flip
                )
            finally:
                self.network.train(was_training)

        return fn

    def update_memory(self, ctx: TaskContext) -> None:
        """Shrink old classes to the new quota; select exemplars of the new classes."""
        self.memory.update(
            ctx.info.new_classes,
            ctx.info.num_seen_classes,
            ctx.class_indices,
            self.features_fn(ctx),
            ctx.train.targets_cpu,
            ctx.generator,
        )

    @torch.no_grad()
    def update_class_means(self, ctx: TaskContext) -> None:
        """Class means of the exemplars' normalised features (and of their flips, if the
        training augmentation flips), as iCaRL's nearest-mean-of-exemplars classifier uses."""
        idx = self.memory.indices()
        feats = self.features_fn(ctx)(idx)
        flipped = self.features_fn(ctx, flip=True)(idx) if ctx.train.transform.preset.flip else None
        labels = ctx.train.targets[idx.to(ctx.train.device)]
        self.class_means = class_means(feats, labels, self.num_seen_classes, flipped)

    def old_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the frozen previous-task network."""
        with torch.no_grad():
            return self.old_network(x)

    # ---- cross-task state ----------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        state = {"num_old_classes": self.num_old_classes, "num_seen_classes": self.num_seen_classes}
        if self.memory is not None:
            state["memory"] = self.memory.state_dict()
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a checkpoint into a fresh learner: the old network is created and buffers that
        grow across tasks (class means) are resized first; the head resizes itself."""
        if self.old_network is None and any(k.startswith("old_network.") for k in state_dict):
            self.old_network = self.network.copy_frozen()
        for name, buf in list(self.named_buffers()):
            stored = state_dict.get(name)
            if isinstance(stored, torch.Tensor) and stored.shape != buf.shape:
                owner_name, _, attr = name.rpartition(".")
                owner = self.get_submodule(owner_name) if owner_name else self
                setattr(owner, attr, torch.empty_like(stored, device=buf.device))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def set_extra_state(self, state: dict) -> None:
        self.num_old_classes = int(state["num_old_classes"])
        self.num_seen_classes = int(state["num_seen_classes"])
        if self.memory is not None and "memory" in state:
            self.memory.load_state_dict(state["memory"])


LEARNERS: Registry[type[Learner]] = Registry("learner")


register_learner = LEARNERS.register_class


def create_learner(
    cfg: LearnerConfig, network: IncrementalNet, memory_cfg: MemoryConfig
) -> Learner:
    """Build the learner named ``cfg.name``."""
    return LEARNERS.get(cfg.name).obj(cfg, network, memory_cfg)
