"""PODNet: pooled outputs distillation and a local similarity classifier."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cilkit.config.schema import FieldError, LearnerConfig, OptimConfig
from cilkit.contract import Batch, Parameters, StageTime, StepOutput, TaskContext, TrainingStage
from cilkit.learners.base import Learner, register_learner


@dataclass(frozen=True)
class PODNetConfig(LearnerConfig):
    """Defaults: the authors' ``options/podnet/podnet_cnn_cifar100.yaml``."""

    name: str = "podnet"
    proxies: int = 10
    """Proxies per class of the local similarity classifier (``proxy_per_class``)."""
    nca_margin: float = 0.6
    """The authors' ``nca.margin``, times the scale: taken from every class's logit as their code
    does, where it cancels (their issue #59 confirms the code subtracts ``margin``, not the
    per-class ``margins``; the published numbers come from that code). On the true class alone,
    as the paper writes it, it drove the learned scale below zero on digits."""
    pod_spatial_factor: float = 3.0
    """lambda_c, times sqrt(seen / new classes) (``pod_spatial.scheduled_factor``)."""
    pod_flat_factor: float = 1.0
    """lambda_f, times sqrt(seen / new classes) (``pod_flat.scheduled_factor``)."""
    imprint: bool = True
    """Initialise the new classes' proxies by k-means on their features (``imprinted``)."""
    finetune_epochs: int = 20
    """Epochs of the class-balanced finetuning of the classifier after each task; 0 = none."""
    finetune_lr: float = 0.05
    finetune_weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        nonnegative = ("nca_margin", "pod_spatial_factor", "pod_flat_factor", "finetune_epochs")
        for key in (*nonnegative, "finetune_weight_decay"):
            if getattr(self, key) < 0:
                raise FieldError(key, "must be >= 0")
        if self.proxies < 1:
            raise FieldError("proxies", "must be >= 1")
        if self.finetune_lr <= 0:
            raise FieldError("finetune_lr", "must be > 0")
        if self.loss.name != "ce":
            raise FieldError("loss", "PODNet trains with its NCA loss; leave learner.loss out")


def nca_loss(
    logits: torch.Tensor, targets: torch.Tensor, margin: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """The authors' ``nca`` (``exclude_pos_denominator: true``) on the scaled logits
    ``l = sigma * y``: ``mean_i log(sum_{c != y_i} exp(l_ic) + exp(max_c l_ic)) - l_iy``. Their
    code shifts by the row maximum and leaves ``exp(0)`` in the true class's slot of the
    denominator (the maximum's term), so the loss is >= 0 and is cross-entropy when the true
    class scores highest. ``margin`` is taken from every class, as their code does (their
    ``margins`` tensor is unused), so it cancels."""
    logits = logits.float() - margin
    others = logits.scatter(1, targets[:, None], float("-inf"))
    top = logits.max(1, keepdim=True).values
    true = logits.gather(1, targets[:, None]).squeeze(1)
    return (torch.cat([others, top], 1).logsumexp(1) - true).mean()


def pod_spatial(old_maps: Sequence[torch.Tensor], maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """POD-spatial (the authors' ``pod`` with ``collapse_channels: spatial``): each map squared,
    summed over the width and over the height, the two concatenated and L2-normalised per
    sample; the mean over samples of the L2 distance to the teacher's, then over stages."""

    def pooled(m: torch.Tensor) -> torch.Tensor:
        m = m.float().pow(2)
        return F.normalize(torch.cat([m.sum(3).flatten(1), m.sum(2).flatten(1)], 1), dim=1)

    return torch.stack(
        [(pooled(a) - pooled(b)).norm(dim=1).mean() for a, b in zip(old_maps, maps, strict=True)]
    ).mean()


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator, steps: int = 100):
    """``k`` centres of ``points`` (CPU): k-means++ seeding drawn from ``generator``, then Lloyd
    iterations until the assignment is stable (points repeated when there are at most ``k``)."""
    if len(points) <= k:
        return points[torch.arange(k) % len(points)]
    centres = points[torch.randint(len(points), (1,), generator=generator)]
    while len(centres) < k:  # k-means++: a point far from the centres is likelier
        d2 = torch.cdist(points, centres).min(1).values.pow(2) + 1e-12
        centres = torch.cat([centres, points[torch.multinomial(d2, 1, generator=generator)]])
    assign = None
    for _ in range(steps):
        new = torch.cdist(points, centres).argmin(1)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        counts = torch.bincount(assign, minlength=k)[:, None]
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


@register_learner("podnet")
class PODNet(Learner):
    """PODNet (Douillard et al., ECCV 2020): pooled outputs distillation, local similarity.

    "PODNet: Pooled Outputs Distillation for Small-Tasks Incremental Learning"; details as in
    the authors' code
    (arthurdouillard/incremental_learning.pytorch, ``inclearn/models/podnet.py`` with
    ``options/podnet/podnet_cnn_cifar100.yaml``):

    - the ``local_similarity`` head (10 proxies per class, learned scale; see
      :class:`~cilkit.backbones.heads.LocalSimilarity`) over features taken before the last
      block's ReLU (``raw_features``); the earlier tasks' proxies are frozen during training
      (``groupwise_factors: {old_weights: 0}``), the backbone, new proxies and scale train;
    - the loss is the authors' NCA (:func:`nca_loss`, not the paper's LSC-NCA: with the margin
      on the true class alone and a learned scale the scale is driven below zero, and the
      predictions invert; their code takes the margin from every class), plus, from task 2,
      ``sqrt(seen / new classes)`` times 3 POD-spatial over every stage's map (``pod``) and 1
      POD-flat, ``1 - cos`` of the final embeddings (``embeddings_similarity``);
    - each new class's proxies are imprinted: k-means (10 clusters, k-means++ seeded from the
      task's generator; the authors use scikit-learn's) on its normalised features, each centre
      normalised (the authors scale the raw centre) times the old proxies' mean norm;
    - after each task but the first, the proxies of every class (not the scale) are finetuned
      with NCA on the class-balanced memory that ``after_task`` left, 20 epochs at lr 0.05
      (``finetuning_config``, ``undersampling``); the backbone stays in training mode, so its
      batch-norm statistics follow that set as in the authors' code, and the teacher and class
      means are taken again after it (the authors copy the old model after finetuning).

    The authors' element-wise gradient clamp to [-5, 5] is left out. Unlike the ``finetune``
    learner (cross-entropy on the new classes' data alone), PODNet trains on the new data and
    the memory with NCA over every seen class, distils the previous model's stage maps and
    embedding, and its stage re-trains only the classifier, on a class-balanced set. PyCIL's
    ``podnet.py`` is not the paper's: POD-spatial weighs 5, not 3, and its finetuning trains
    the backbone and the new proxies (lr 0.005, cosine) with the old proxies fixed.
    """

    config_cls = PODNetConfig
    cfg: PODNetConfig
    head = "local_similarity"
    needs_memory = True
    keeps_old_network = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.network.backbone.last_relu = False  # the authors' ``raw_features``
        self.network.head.set_proxies(self.cfg.proxies)

    @property
    def adaptive_factor(self) -> float:
        """``sqrt(seen classes / new classes)``, the POD terms' schedule."""
        new = self.num_seen_classes - self.num_old_classes
        return math.sqrt(self.num_seen_classes / new) if new else 1.0

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        if self.cfg.imprint and self.num_old_classes:
            self._imprint(ctx)

    @torch.no_grad()
    def _imprint(self, ctx: TaskContext) -> None:
        head = self.network.head
        old_norm = torch.cat(list(head.weights[:-1])).norm(dim=1).mean()
        features = self.features_fn(ctx)
        generator = torch.Generator().manual_seed(0)
        generator.set_state(ctx.generator.get_state())  # a copy: later draws are unchanged
        rows = []
        for c in ctx.info.new_classes:
            unit = F.normalize(features(ctx.class_indices(c)), dim=1).cpu()
            rows.append(kmeans(unit, head.rows_per_class, generator))
        head.weights[-1].copy_(F.normalize(torch.cat(rows), dim=1).to(old_norm) * old_norm)

    def configure_training(self, ctx: TaskContext) -> Parameters:
        """The previous tasks' proxies stay fixed; the backbone, new proxies and scale train."""
        head = self.network.head
        head.requires_grad_(True)
        for chunk in head.weights[:-1]:
            chunk.requires_grad_(False)
        return [p for p in self.network.parameters() if p.requires_grad]

    def training_step(self, batch: Batch) -> StepOutput:
        head = self.network.head
        features, maps = self.network.backbone.forward_intermediates(batch.x)
        logits = head(features)
        nca = nca_loss(logits, batch.y, self.cfg.nca_margin * head.scale())
        if self.old_network is None:
            return StepOutput(nca, {"nca": nca.detach()}, logits)
        with torch.no_grad():
            old_features, old_maps = self.old_network.backbone.forward_intermediates(batch.x)
        factor = self.adaptive_factor
        flat = 1 - F.cosine_similarity(features.float(), old_features.float()).mean()
        flat = factor * self.cfg.pod_flat_factor * flat
        spatial = factor * self.cfg.pod_spatial_factor * pod_spatial(old_maps, maps)
        terms = {"nca": nca.detach(), "pod_flat": flat.detach(), "pod_spatial": spatial.detach()}
        return StepOutput(nca + flat + spatial, terms, logits)

    def stages(self, ctx: TaskContext, when: StageTime) -> list[TrainingStage]:
        stages = super().stages(ctx, when)
        if when == "after_task" and self.num_old_classes and self.cfg.finetune_epochs:
            stages.append(self._balanced_finetuning(ctx))
        return stages

    def _balanced_finetuning(self, ctx: TaskContext) -> TrainingStage:
        network, head = self.network, self.network.head

        def before_epoch(epoch: int) -> None:
            head.requires_grad_(True)  # every class's proxies are finetuned, the scale is not
            if head.sigma is not None:
                head.sigma.requires_grad_(False)

        def step(batch: Batch) -> StepOutput:
            with torch.no_grad():
                features = network.forward_features(batch.x)
            logits = head(features)
            loss = nca_loss(logits, batch.y, self.cfg.nca_margin * head.scale())
            return StepOutput(loss, {"nca": loss.detach()}, logits)

        def finish() -> None:
            self.old_network = network.copy_frozen()
            self.update_class_means(ctx)

        return TrainingStage(
            name="class-balanced finetuning",
            parameters=list(head.weights),
            epochs=self.cfg.finetune_epochs,
            optim=OptimConfig(
                lr=self.cfg.finetune_lr,
                weight_decay=self.cfg.finetune_weight_decay,
                scheduler="constant",
            ),
            step=step,
            indices=self.memory.indices(),
            before_epoch=before_epoch,
            finish=finish,
        )
