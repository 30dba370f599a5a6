"""The Learner contract: hooks the engine calls; the engine owns the loop, backward and step.

A method subclasses :class:`Learner` (or another learner) and overrides only what differs. The
engine calls, for each task:

- ``before_task(ctx)``: grow the network (default: the head by the task's new classes), set up
  task state. Not called again when a task resumes from a mid-task checkpoint: what it does must
  live in the learner's state.
- ``train_indices(ctx)``: which training samples this task trains on (default: the new classes
  plus the exemplar memory). Called at every start of the task, resume included.
- ``before_training(ctx, indices)``: before the first epoch (default: tell the loss the counts).
- ``configure_training(ctx)``: right before the engine builds the optimiser, at every start of
  the task's training, resume included (Lightning's ``on_before_optimizer_setup``): freeze parts
  and return what to optimise, as parameters or parameter groups with lr / weight-decay factors.
- ``before_epoch(epoch, epochs)``, ``transform_batch(batch, generator)`` (mixup, a second
  view, ... on the device-side batch), ``training_step(batch)`` (a loss and named terms; no
  backward, no step), ``after_step()``.
- ``stages(ctx, when)``: extra training stages, each with its own data, parameters and
  optimiser, run before the main training, after it, or after ``after_task``.
- ``after_task(ctx)``: keep the old network if asked, update the memory and class means.
- ``predict(x)``: scores per classifier, e.g. ``{"cnn": logits, "nme": -distances}``; every key
  is evaluated and reaches the metrics, the table, the summary and the plots.
- ``reset_evaluation_stats()`` before each evaluation and ``evaluation_stats()`` after it:
  scalars a learner counts during ``predict`` (RIDE's experts per sample), written into the
  task's record (``evaluation_stats``), the table and the summary.

Everything kept across tasks is a registered parameter or buffer, or in ``extra_state``, so it is
saved with the learner's ``state_dict``. Frozen parts are wrapped in :class:`Frozen` and stay in
eval mode whatever the engine calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from cilkit.backbones import Backbone, Frozen, IncrementalNet
from cilkit.buffers.features import FeatureCache
from cilkit.buffers.memory import ExemplarMemory
from cilkit.buffers.selection import class_means, nme_logits
from cilkit.components.classifier import warn_if_scale_inverted
from cilkit.components.rebalance import TwoStageRebalance
from cilkit.config.schema import LearnerConfig, MemoryConfig
from cilkit.contract import Batch, Parameters, StageTime, StepOutput, TaskContext, TrainingStage
from cilkit.losses import create_loss, kd_loss
from cilkit.registry import Registry


class Learner(nn.Module):
    """The contract every method extends; trains with the classification loss over every seen
    class unless a method says otherwise.

    Args:
        cfg: this learner's config.
        network: backbone plus expandable head.
        memory_cfg: exemplar memory config (disabled unless a budget is set).
        build_backbone: builds a fresh backbone from the run's backbone config (for methods that
            add feature extractors).
    """

    config_cls: ClassVar[type[LearnerConfig]] = LearnerConfig
    needs_memory: ClassVar[bool] = False
    """The method cannot run without an exemplar memory."""
    uses_memory: ClassVar[bool] = True
    """The method trains on exemplars when a memory is configured."""
    keeps_old_network: ClassVar[bool] = False
    """Keep a frozen copy of the network after each task (``self.old_network``)."""
    head: ClassVar[str | None] = None
    """The classifier head the method needs (``cilkit list heads``); None = any (linear unless
    ``backbone.head`` says otherwise). A config naming another head is refused."""
    memory_selection: ClassVar[str | None] = None
    """The memory selection the method needs (``memory.selection``); None = any."""
    needs_raw_batch: ClassVar[bool] = False
    """Hand ``training_step`` the un-augmented uint8 images too (``batch.raw``)."""
    num_views: ClassVar[int] = 1
    """Independently augmented views per image (``batch.x`` plus ``batch.views``)."""

    def __init__(
        self,
        cfg: LearnerConfig,
        network: IncrementalNet,
        memory_cfg: MemoryConfig,
        build_backbone: Callable[[], Backbone] | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.network = network
        self.build_backbone = build_backbone
        self.loss_fn = create_loss(cfg.loss)
        self.rebalancer = TwoStageRebalance(cfg.rebalance) if cfg.rebalance else None
        self.memory = ExemplarMemory(memory_cfg) if memory_cfg.enabled else None
        self.old_network: Frozen | None = None
        self.register_buffer("class_means", torch.zeros(0, network.feature_dim))
        self.feature_cache = FeatureCache()  # not state: recomputed whenever the weights change
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

    def configure_training(self, ctx: TaskContext) -> Parameters:
        """Freeze what this task does not train and return what the optimiser updates.

        The engine calls it right before building the task's optimiser, at every start of the
        task's training, resume included, so freezing decided here survives a mid-task resume.
        Parameters that are not returned keep their values.
        """
        return [p for p in self.network.parameters() if p.requires_grad]

    def before_epoch(self, epoch: int, epochs: int) -> None:
        """Before each epoch (deferred re-weighting, curricula)."""
        self.loss_fn.set_epoch(epoch, epochs)

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The device-side batch before ``training_step`` (mixup, cutmix, ...); draws from
        ``generator``, the engine's saved augmentation generator."""
        return batch

    def training_step(self, batch: Batch) -> StepOutput:
        """The classification loss (``learner.loss``, cross-entropy by default) over every seen
        class."""
        features, logits = self.forward_train(batch.x)
        loss = self.classification_loss(logits, batch.y, features)
        return StepOutput(loss, {"cls": loss.detach()}, logits)

    def after_step(self) -> None:
        """Called after each optimiser step."""

    def stages(self, ctx: TaskContext, when: StageTime) -> list[TrainingStage]:
        """Extra training stages at point ``when`` of the task (default: two-stage rebalancing
        after ``after_task``, when configured). Building a stage must not change the learner:
        changes go in the stage's ``start`` (fresh stages only) or its ``finish``."""
        if self.rebalancer is None or when != "after_task":
            return []
        return [self.rebalancer.stage(self.network, ctx)]

    def after_task(self, ctx: TaskContext) -> None:
        """Warn if the head's learned scale inverted it; keep the old network if asked; update
        the exemplar memory and class means."""
        warn_if_scale_inverted(self.network, ctx.info.task_id)
        if self.keeps_old_network:
            self.old_network = self.network.copy_frozen()
        if self.memory is not None:
            self.update_memory(ctx)
            self.update_class_means(ctx)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """CNN logits, and nearest-mean-of-exemplars scores when class means exist."""
        return self.predict_features(self.network.forward_features(x))

    def evaluation_extractor(self) -> nn.Module | Sequence[nn.Module] | None:
        """The frozen module whose output :meth:`predict_features` turns into scores, when the
        method's predictions are a function of it alone (prototype and analytic methods), else
        None (``predict`` runs on the images).

        When it returns a module without trainable parameters, the engine computes each test
        image's features once and serves them from a cache while the module's values stay the
        same (``engine.feature_cache``), instead of running the network over every seen class
        at every evaluation; a module with trainable parameters is recomputed every time.
        A sequence of modules (the branches of a growing ensemble) gives features side by
        side, each module cached on its own values: the same objects at every call, so that
        only a branch that is new or changed runs again."""
        return None

    def query_extractor(self) -> nn.Module | None:
        """A frozen module whose features of the un-augmented test images
        :meth:`predict_queried` takes beside the images (the pre-trained query model with which
        L2P, DualPrompt and CODA-Prompt choose their prompts), else None.

        The engine serves these features from the same test-feature cache as an
        :meth:`evaluation_extractor`'s, so the query model runs over each test image once while
        its values stay the same; ``predict(x)`` must equal ``predict_queried(x, query(x))``
        (a contract test)."""
        return None

    @torch.no_grad()
    def predict_queried(self, x: torch.Tensor, query: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scores per classifier of images ``x`` whose :meth:`query_extractor` features are
        ``query`` (only for a learner that declares a query extractor)."""
        raise NotImplementedError(f"{type(self).__name__} declares no query_extractor")

    @torch.no_grad()
    def predict_features(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scores per classifier of ``features`` (the output of :meth:`evaluation_extractor`,
        or of ``network.forward_features`` for the default ``predict``)."""
        logits = self.head_logits(features)
        if self.rebalancer is not None:
            logits = self.rebalancer.apply(logits)  # LWS scales act at evaluation only
        out = {"cnn": self.loss_fn.adjust_logits(logits)}
        if len(self.class_means) == self.num_seen_classes and self.num_seen_classes:
            out["nme"] = nme_logits(features.float(), self.class_means)
        return out

    def reset_evaluation_stats(self) -> None:
        """Called before each evaluation: forget what ``predict`` counted so far."""

    def evaluation_stats(self) -> dict[str, float]:
        """Scalars ``predict`` counted since ``reset_evaluation_stats`` (default none). The
        evaluation is not sharded (every process predicts every test sample), so each process
        holds the whole test set's values."""
        return {}

    def stored_samples(self) -> int:
        """How many training samples the method keeps (its memory's size)."""
        return len(self.memory) if self.memory is not None else 0

    def frozen_modules(self) -> list[Frozen]:
        """The frozen parts (teacher, old extractors): in eval mode, without gradients, always."""
        return [m for m in self.modules() if isinstance(m, Frozen)]

    # ---- shared steps --------------------------------------------------------------------------
    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier's logits of ``features``, in training and at prediction (a method
        that corrects logits, as BiC, says so here)."""
        return self.network.forward_head(features)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits of the network being trained."""
        features = self.network.forward_features(x)
        return features, self.head_logits(features)

    def classification_loss(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The configured classification loss (``learner.loss``)."""
        return self.loss_fn(logits, targets, features if self.loss_fn.needs_features else None)

    def new_classes_only(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with the old classes masked out of the softmax: cross-entropy on them is
        the cross-entropy over the new classes' logits alone (PyCIL's finetune, LwF and EWC use
        ``logits[:, known:]`` with shifted labels; ``exp(-1e4)`` is 0 in float32), and a loss's
        per-class counts (long-tail losses) stay aligned with every seen class."""
        if not self.num_old_classes:
            return logits
        old = torch.arange(self.num_old_classes, device=logits.device)  # CUDA wants it there
        return logits.float().index_fill(1, old, _MASKED)

    def classification_with_kd(
        self,
        batch: Batch,
        temperature: float,
        weights: Callable[[], tuple[float, float]] = lambda: (1.0, 1.0),
        new_only: bool = False,
    ) -> StepOutput:
        """``a * classification + b * KD`` on the old classes' logits, the step of iCaRL, WA,
        BiC, EEIL and LwF: KD is Hinton's softened cross-entropy to the frozen previous network
        (``kd_loss``); ``weights()`` gives ``(a, b)``; ``new_only`` restricts the classification
        loss to the new classes (:meth:`new_classes_only`). Without a previous network (the
        first task) it is the classification loss alone."""
        features, logits = self.forward_train(batch.x)
        scores = self.new_classes_only(logits) if new_only else logits
        ce = self.classification_loss(scores, batch.y, features)
        if self.old_network is None:
            return StepOutput(ce, {"ce": ce.detach()}, logits)
        kd = kd_loss(logits[:, : self.num_old_classes], self.old_logits(batch.x), temperature)
        a, b = weights()
        return StepOutput(a * ce + b * kd, {"ce": ce.detach(), "kd": kd.detach()}, logits)

    def task_features(self, ctx: TaskContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of the task's new classes' training samples (eval mode, no
        augmentation, each image computed once per weight state: :meth:`features_fn`)."""
        idx = ctx.new_indices()
        return self.features_fn(ctx)(idx), ctx.train.targets[idx.to(ctx.train.device)]

    def features_fn(self, ctx: TaskContext, flip: bool = False):
        """Feature extractor over training-split positions, in eval mode. Herding, the class
        means and a method's own uses share one pass: an image's features are computed once
        while the extractor's weights stay the same (:class:`~cilkit.buffers.features.FeatureCache`)."""

        def fn(indices: torch.Tensor) -> torch.Tensor:
            was_training = self.network.training
            self.network.eval()
            try:
                return self.feature_cache.get(
                    ctx.train,
                    self.network,
                    self.network.forward_features,
                    indices,
                    ctx.batch_size,
                    flip=flip,
                    amp=ctx.amp,
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
        grow across tasks (class means) are resized first; heads and branched networks resize
        themselves. Whatever loading grows ends on the learner's device (the network's), not on
        the CPU where checkpoints are read."""
        device = next(self.network.parameters()).device
        if self.old_network is None and any(k.startswith("old_network.") for k in state_dict):
            self.old_network = self.network.copy_frozen()
        for name, buf in list(self.named_buffers()):
            stored = state_dict.get(name)
            if isinstance(stored, torch.Tensor) and stored.shape != buf.shape:
                owner_name, _, attr = name.rpartition(".")
                owner = self.get_submodule(owner_name) if owner_name else self
                setattr(owner, attr, torch.empty_like(stored, device=buf.device))
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.to(device)  # e.g. BiC's per-task pairs, EWC's anchors: built from the CPU tensors
        return result

    def set_extra_state(self, state: dict) -> None:
        self.num_old_classes = int(state["num_old_classes"])
        self.num_seen_classes = int(state["num_seen_classes"])
        if self.memory is not None and "memory" in state:
            self.memory.load_state_dict(state["memory"])


_MASKED = -1e4
"""The logit that takes a class out of a float32 softmax."""

LEARNERS: Registry[type[Learner]] = Registry("learner")


register_learner = LEARNERS.register_class


def create_learner(
    cfg: LearnerConfig,
    network: IncrementalNet,
    memory_cfg: MemoryConfig,
    build_backbone: Callable[[], Backbone] | None = None,
) -> Learner:
    """Build the learner named ``cfg.name``."""
    return LEARNERS.get(cfg.name).obj(cfg, network, memory_cfg, build_backbone)
