"""Prototype LT-CIL: nearest-prototype learning with a bias layer, sample mix and prototype
distance distillation (the thesis code "Class_incremental_learning_in_long_tail")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.buffers.selection import class_means
from cilkit.components.calibration import ClassBias
from cilkit.config.schema import FieldError, LearnerConfig, OptimConfig
from cilkit.contract import Batch, StageTime, StepOutput, TaskContext, TrainingStage
from cilkit.learners.base import Learner, register_learner
from cilkit.losses.prototype import pull_loss, push_loss, squared_distances


@dataclass(frozen=True)
class ProtoLTCILConfig(LearnerConfig):
    name: str = "proto_ltcil"
    mix: bool = True
    """Sample mix (seed ``--mix``): current-task images mixed with exemplars."""
    mix_lambda: float = 0.5
    """Share of the current-task image in a mixed image (and of its label in the loss)."""
    mix_weight: float = 0.1
    """Weight of the mixed images' NCM loss (the seed's fixed 0.1)."""
    pull_weight: float = 1e-3
    """Weight of the pull term (seed ``--pullR``, README command)."""
    push_weight: float = 1e-4
    """Weight of the push term (seed ``--pushR``, README command)."""
    temperature: float = 2.0
    """The seed's T: push distances are divided by it; pull's weight grows as ``T**task``."""
    task_scaling: bool = True
    """The seed's schedule: pull weight times ``T**task_id``, push weight over ``task_id + 1``."""
    bias_epochs: int = 30
    """Epochs of the bias-layer stage after each task (seed ``--Bias_epoch``); 0 = off."""
    bias_lr: float = 1e-4
    """Adam learning rate of the bias-layer stage (the seed's ``bisoptim``)."""
    bias_first_task: bool = True
    """Train the first task's pair too (the seed: per-class calibration of a long-tailed first
    task); false = from the first incremental task on, as BiC."""

    def __post_init__(self) -> None:
        if self.loss.name != "ce":
            raise FieldError("loss", "proto_ltcil trains with its NCM loss on distances: use ce")
        if self.rebalance is not None:
            raise FieldError("rebalance", "proto_ltcil has no linear head to rebalance")
        if not 0 < self.mix_lambda < 1:
            raise FieldError("mix_lambda", "must be in (0, 1)")
        for key in ("mix_weight", "pull_weight", "push_weight", "bias_epochs"):
            if getattr(self, key) < 0:
                raise FieldError(key, "must be >= 0")
        for key in ("temperature", "bias_lr"):
            if getattr(self, key) <= 0:
                raise FieldError(key, "must be > 0")


@register_learner("proto_ltcil")
class ProtoLTCIL(Learner):
    """Prototype LT-CIL (the thesis code ``COAOX/Class_incremental_learning_in_long_tail``).

    Nearest-prototype classification on squared Euclidean distances ``d`` to class prototypes
    (class means of the un-normalised features, as in prototypical networks, Snell et al. 2017),
    trained with the seed's ``NCM`` loss: cross-entropy of ``softmax(-bias(d))``. Old classes'
    prototypes are the stored means of their exemplars' features (eval mode, refreshed at each
    task's end, as the seed does); new classes' are the means of the batch's features of each
    class (with gradients), a new class absent from the batch left out of the softmax.

    - Bias layer ("re-measure", after BiC): per-class ``alpha * d + beta``, a pair of vectors
      per task; after each task a stage of ``bias_epochs`` trains only that task's pair (Adam,
      ``bias_lr``, extractor frozen) on a balanced set (old exemplars plus, per new class, as
      many random samples as its memory quota), the first task's too unless
      ``bias_first_task`` is false.
    - Sample mix: each current-task image is mixed with a random exemplar, loss
      ``mix_weight * (lambda NCM(y_new) + (1 - lambda) NCM(y_old))``.
    - Prototype distance distillation: ``pull`` (:func:`pull_loss`, old prototypes recomputed
      from the batch's exemplars vs stored) and ``push`` (:func:`push_loss`, new vs old), with
      the seed's task schedule ``pull_weight * T**t``, ``push_weight / (t + 1)``.

    Departures from the seed, in brief: all of a class's batch samples form its prototype (the
    seed: at most 5); pull is a squared distance (zero when nothing moved) and push is bounded
    at d = 0; the seed's "center" and spread terms are left out; the mix pairs each new image
    with one exemplar; the bias stage trains on a balanced set at a constant lr (the seed: the
    imbalanced task data, lr doubling every 10 epochs); ``convnet4`` pools its 2x2x64 map.
    ``predict`` gives ``cnn`` (``-bias(d)``) and ``nme`` (``-d``); the linear head is unused.
    The seed's options, their cilkit keys and the full list of differences are in
    ``docs/methods/proto_ltcil.md``.
    """

    config_cls = ProtoLTCILConfig
    cfg: ProtoLTCILConfig
    needs_memory = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bias = ClassBias()
        self.register_buffer("has_prototype", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("bias_indices", torch.zeros(0, dtype=torch.long))
        self._split = None

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        n, d = ctx.info.num_new_classes, self.class_means.shape[1]
        self.bias.add_task(n, self.class_means.device)
        self.class_means = torch.cat([self.class_means, self.class_means.new_zeros(n, d)])
        self.has_prototype = F.pad(self.has_prototype, (0, n))

    def before_training(self, ctx: TaskContext, indices: torch.Tensor) -> None:
        super().before_training(ctx, indices)
        self._split = ctx.train  # where the exemplars' images are, for the sample mix

    def configure_training(self, ctx: TaskContext) -> list[nn.Parameter]:
        return list(self.network.backbone.parameters())  # the linear head is not used

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Pair each current-task image with a random exemplar and mix them.

        How many images are mixed depends on the batch, so it is counted on the host, from
        the labels of the batch's CPU positions (``batch.index``): nothing comes back from the
        device. The draws use ``generator`` on its own device."""
        if not self.cfg.mix or not self.num_old_classes or not len(self.memory):
            return batch
        split = self._split
        new = torch.nonzero(split.targets_cpu[batch.index.cpu()] >= self.num_old_classes)
        if not len(new):
            return batch
        stored = self.memory.indices()
        draw = torch.randint(len(stored), (len(new),), generator=generator, device=generator.device)
        if split.images is None:  # image files are decoded on the host from host positions
            partner = split.augmented(stored[draw.cpu()], generator)
        else:  # DeviceSplit.augmented without the positions' trip to the host
            at = stored.to(split.device)[draw.to(split.device)]
            partner = Batch(
                split.transform.train(split.images[at], generator), split.targets[at], at
            )
        new = new.flatten().to(batch.x.device, non_blocking=True)
        lam = self.cfg.mix_lambda
        batch.extra["mix"] = (lam * batch.x[new] + (1 - lam) * partner.x, batch.y[new], partner.y)
        return batch

    def scores(
        self,
        features: torch.Tensor,
        prototypes: torch.Tensor,
        available: torch.Tensor,
        train_last: bool = False,
    ) -> torch.Tensor:
        """``-bias(d)``, classes without a prototype out of the softmax."""
        scores = -self.bias(squared_distances(features, prototypes), train_last)
        return scores.masked_fill(~available, float("-inf"))

    def training_step(self, batch: Batch) -> StepOutput:
        mix = batch.extra.get("mix")
        # the mixed images go through the same forward pass as the batch: one pass, and
        # BatchNorm never sees a batch of one mixed image alone
        x = batch.x if mix is None else torch.cat([batch.x, mix[0]])
        features = self.network.forward_features(x).float()
        features, mixed_features = features[: len(batch.x)], features[len(batch.x) :]
        old, n, y = self.num_old_classes, self.num_seen_classes, batch.y
        counts = y.new_zeros(n).scatter_add_(0, y, torch.ones_like(y))  # bincount syncs on GPU
        means = features.new_zeros(n, features.shape[1]).index_add(0, y, features)
        means = means / counts.clamp_min(1)[:, None]
        stored, known = self.class_means[:old], self.has_prototype[:old]
        prototypes = torch.cat([stored, means[old:]])
        available = torch.cat([known, counts[old:] > 0])
        logits = self.scores(features, prototypes, available)
        ncm = F.cross_entropy(logits, y)
        loss, terms = ncm, {"ncm": ncm.detach()}
        if mix is not None:
            _, y_a, y_b = mix
            mixed = self.scores(mixed_features, prototypes, available)
            lam = self.cfg.mix_lambda
            mix = lam * F.cross_entropy(mixed, y_a) + (1 - lam) * F.cross_entropy(mixed, y_b)
            loss, terms["mix"] = loss + self.cfg.mix_weight * mix, mix.detach()
        if old:
            present, new_present = (counts[:old] > 0) & known, counts[old:] > 0
            pull = pull_loss(means[:old], stored, present)
            push = push_loss(means[old:], stored, self.cfg.temperature, new_present, known)
            t = len(self.bias.alphas) - 1
            scale = (self.cfg.temperature**t, 1 / (t + 1)) if self.cfg.task_scaling else (1, 1)
            loss = loss + self.cfg.pull_weight * scale[0] * pull
            loss = loss + self.cfg.push_weight * scale[1] * push
            terms |= {"pull": pull.detach(), "push": push.detach()}
        return StepOutput(loss, terms, logits.detach())

    @torch.no_grad()
    def update_class_means(self, ctx: TaskContext) -> None:
        """Prototypes: the means of each class's exemplar features with the current extractor."""
        idx = self.memory.indices()
        features = self.features_fn(ctx)(idx)
        labels = ctx.train.targets[idx.to(ctx.train.device)]
        n = self.num_seen_classes
        self.class_means = class_means(features, labels, n, normalise=False)
        self.has_prototype = torch.bincount(labels, minlength=n) > 0

    def after_task(self, ctx: TaskContext) -> None:
        """Memory and prototypes, then the bias stage's balanced set."""
        super().after_task(ctx)
        kept = self.memory.per_class
        parts = [kept[c] for c in range(self.num_old_classes) if c in kept]
        for c in ctx.info.new_classes:  # as many random samples as the class's memory quota
            members, k = ctx.class_indices(c), len(kept.get(c, ()))
            parts.append(members[torch.randperm(len(members), generator=ctx.generator)[:k]])
        self.bias_indices = torch.cat(parts).to(self.bias_indices.device)

    def stages(self, ctx: TaskContext, when: StageTime) -> list[TrainingStage]:
        if when != "after_task" or not self.cfg.bias_epochs or not len(self.bias_indices):
            return []
        if not self.num_old_classes and not self.cfg.bias_first_task:
            return []
        network = self.network

        def step(batch: Batch) -> StepOutput:
            with torch.no_grad():
                features = network.forward_features(batch.x).float()
            logits = self.scores(features, self.class_means, self.has_prototype, train_last=True)
            loss = F.cross_entropy(logits, batch.y)
            return StepOutput(loss, {"bias": loss.detach()}, logits.detach())

        return [
            TrainingStage(
                name="bias layer",
                parameters=[self.bias.alphas[-1], self.bias.betas[-1]],
                epochs=self.cfg.bias_epochs,
                optim=OptimConfig(
                    name="adam", lr=self.cfg.bias_lr, weight_decay=0.0, scheduler="constant"
                ),
                step=step,
                indices=self.bias_indices.cpu(),
                before_epoch=lambda epoch: network.eval(),
            )
        ]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``cnn``: bias-corrected nearest-prototype scores; ``nme``: before the bias layer."""
        features = self.network.forward_features(x).float()
        d = squared_distances(features, self.class_means)
        unknown = ~self.has_prototype
        return {
            "cnn": (-self.bias(d)).masked_fill(unknown, float("-inf")),
            "nme": (-d).masked_fill(unknown, float("-inf")),
        }
