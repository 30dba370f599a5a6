"""SLCA: the whole pre-trained model fine-tuned with a slow learning rate and the head with a fast
one, then classifier alignment on features sampled from class-wise Gaussians."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.components.analytic import ClassStatistics, gaussian_samples
from cilkit.config.schema import FieldError, LearnerConfig
from cilkit.contract import Batch, Parameters, StepOutput, TaskContext
from cilkit.learners.base import Learner, register_learner


@dataclass(frozen=True)
class SLCAConfig(LearnerConfig):
    name: str = "slca"
    backbone_lr_scale: float = 0.01
    """The backbone's learning rate as a multiple of ``optim.lr`` (the authors' ``bcb_lrscale``,
    1/100: 1e-4 against the head's 0.01); 0 freezes it (their ``fix_bcb``)."""
    ca_epochs: int = 5
    """Epochs of classifier alignment after each task from the second on (``ca_epochs``)."""
    ca_samples: int = 256
    """Features sampled per class and epoch, and the alignment's batch size
    (``num_sampled_pcls``)."""
    ca_lr: float = 0.01
    """The alignment's SGD learning rate (theirs: the main training's, 0.01), cosine to 0 over
    its epochs."""
    ca_momentum: float = 0.9
    """The alignment's SGD momentum (theirs: 0.9)."""
    ca_weight_decay: float = 5e-4
    """The alignment's weight decay (theirs: the main training's, 5e-4)."""
    logit_norm: float | None = 0.1
    """Temperature of the alignment's logit normalisation (``ca_with_logit_norm``): logits
    divided by the mean over tasks of each task's logit norm, then by this; None: plain CE."""
    covariance_ridge: float = 1e-4
    """Added to each class covariance's diagonal (the authors' ``1e-4 * I``)."""

    def __post_init__(self) -> None:
        if self.backbone_lr_scale < 0:
            raise FieldError("backbone_lr_scale", "must be >= 0")
        if self.ca_epochs < 0:
            raise FieldError("ca_epochs", "must be >= 0")
        if self.ca_samples < 1:
            raise FieldError("ca_samples", "must be >= 1")
        if self.ca_lr <= 0:
            raise FieldError("ca_lr", "must be > 0")
        if not 0 <= self.ca_momentum < 1:
            raise FieldError("ca_momentum", "must be in [0, 1)")
        if self.ca_weight_decay < 0:
            raise FieldError("ca_weight_decay", "must be >= 0")
        if self.logit_norm is not None and self.logit_norm <= 0:
            raise FieldError("logit_norm", "must be > 0 (or null for plain cross-entropy)")
        if self.covariance_ridge < 0:
            raise FieldError("covariance_ridge", "must be >= 0")
        if self.rebalance is not None:
            raise FieldError("rebalance", "slca aligns its classifier itself: no rebalancing")


def task_normalized_logits(
    logits: torch.Tensor, slices: list[slice], temperature: float
) -> torch.Tensor:
    """SLCA's logit normalisation: ``logits / mean_t ||logits[:, task t]|| / temperature``, the
    norm of each task's block of logits (+ 1e-7) averaged over the tasks, per sample."""
    norms = torch.stack([logits[:, s].norm(dim=1) + 1e-7 for s in slices], dim=1)
    return logits / norms.mean(dim=1, keepdim=True) / temperature


@register_learner("slca")
class SLCA(Learner):
    """Slow Learner with Classifier Alignment (Zhang et al., ICCV 2023).

    Zhang, Wang, Kang, Chen, Wei, "SLCA: Slow Learner with Classifier Alignment for Continual
    Learning on a Pre-trained Model", ICCV 2023; as the authors' code (GengDavid/SLCA@169d4e6
    ``models/slca.py``, ``models/base.py`` ``_compute_class_mean``, ``convs/linears.py``
    ``SimpleContinualLinear``, ``exps/slca/*.json``):

    - each task: the whole network trains with SGD, the backbone at ``backbone_lr_scale`` times
      the head's rate; the head is one linear block per task (``trunc_normal(std=0.02)``, bias
      0), the older blocks frozen; cross-entropy over the task's classes only;
    - then each new class's mean and covariance (``torch.cov`` in float64, + ``1e-4 I``) of the
      un-augmented training features of the model just trained; old classes keep theirs;
    - classifier alignment (from the second task): a copy of the head, every block trainable,
      trained ``ca_epochs`` epochs on ``ca_samples`` features per seen class drawn each epoch
      from ``N(mu_c (0.9 + 0.1 (t_c + 1) / (T + 1)), Sigma_c)`` (``t_c`` the class's task,
      ``T`` the current one: older classes' means shrink more), shuffled, in batches of
      ``ca_samples``; SGD (``ca_lr``, ``ca_momentum``, ``ca_weight_decay``), cosine over the epochs,
      normalised logits at temperature ``logit_norm``;
    - the aligned copy classifies; the next task trains on from the head as it was before the
      alignment (the authors' ``fc.backup()`` before it and ``fc.recall()`` in ``after_task``).

    The alignment is a head-only optimisation on sampled features, run in ``after_task`` with
    its own generator (seeded from the task's), so a resumed task repeats it exactly; it has no
    mid-alignment checkpoint (5 epochs of a linear layer). The authors' schedule: SGD lr 0.01,
    momentum 0.9, weight decay 5e-4, batch 128, 20 epochs, milestone 18 (gamma 0.1) on CIFAR-100
    (``exps/slca/slca_cifar.json``), ViT-B/16 ImageNet-21k (``vit-b-p16``: timm's
    ``vit_base_patch16_224_in21k``); their class index ``c // task_size`` assumes equal tasks,
    here each class's own task is used. LAMDA-PILOT's ``slca`` (``models/slca.py``, 5240714) is
    the authors' code; its ``exps/slca.json`` trains at batch 64 with 3 alignment epochs and
    an ImageNet-1k fine-tuned ViT (``vit_base_patch16_224``).
    """

    config_cls = SLCAConfig
    cfg: SLCAConfig
    uses_memory = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        d = self.network.feature_dim
        self.statistics = ClassStatistics(d, scatter=True)
        self.register_buffer("class_task", torch.zeros(0, dtype=torch.long))
        self.aligned = copy.deepcopy(self.network.head)  # the aligned copy that classifies
        self.aligned.requires_grad_(False)

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        head = self.network.head
        with torch.no_grad():  # the new block as the authors' SimpleContinualLinear
            nn.init.trunc_normal_(head.weights[-1], std=0.02, generator=ctx.generator)
            if head.has_bias:
                head.biases[-1].zero_()

    def configure_training(self, ctx: TaskContext) -> Parameters:
        head = self.network.head
        for p in self.network.parameters():
            p.requires_grad_(False)
        newest = [head.weights[-1], *([head.biases[-1]] if head.has_bias else [])]
        for p in newest:
            p.requires_grad_(True)
        groups: list = [*newest]
        if self.cfg.backbone_lr_scale > 0:
            backbone = list(self.network.backbone.parameters())
            for p in backbone:
                p.requires_grad_(True)
            groups.append({"params": backbone, "lr_scale": self.cfg.backbone_lr_scale})
        return groups

    def training_step(self, batch: Batch) -> StepOutput:
        features, logits = self.forward_train(batch.x)
        loss = self.classification_loss(self.new_classes_only(logits), batch.y, features)
        return StepOutput(loss, {"ce": loss.detach()}, logits)

    @torch.no_grad()
    def after_task(self, ctx: TaskContext) -> None:
        super().after_task(ctx)
        features, labels = self.task_features(ctx)
        info = ctx.info
        self.statistics.update(features.double(), labels, info.num_seen_classes)
        task = torch.full((info.num_new_classes,), info.task_id, dtype=torch.long)
        self.class_task = torch.cat(
            [self.class_task[: info.num_old_classes], task.to(self.class_task)]
        )
        self.aligned = copy.deepcopy(self.network.head)
        if info.task_id > 0 and self.cfg.ca_epochs > 0:
            generator = torch.Generator().manual_seed((ctx.generator.initial_seed() + 1) % 2**63)
            with torch.enable_grad():
                self._align(info.task_id, generator)
        self.aligned.requires_grad_(False)

    def class_covariances(self) -> torch.Tensor:
        """``(C, d, d)`` float64 covariances of the seen classes, ridge included."""
        cov = self.statistics.covariances()
        eye = torch.eye(cov.shape[1], dtype=cov.dtype, device=cov.device)
        return cov + self.cfg.covariance_ridge * eye

    def _align(self, task_id: int, generator: torch.Generator) -> None:
        c = self.cfg
        head = self.aligned.train()
        head.requires_grad_(True)
        lr = c.ca_lr
        sgd = torch.optim.SGD(
            head.parameters(), lr=lr, momentum=c.ca_momentum, weight_decay=c.ca_weight_decay
        )
        shrink = 0.9 + 0.1 * (self.class_task.double() + 1) / (task_id + 1)
        means = self.statistics.means() * shrink[:, None].to(self.statistics.sums)
        covs = self.class_covariances()
        classes = len(means)
        slices = head.chunk_slices()
        device = head.weights[0].device
        for epoch in range(c.ca_epochs):
            for group in sgd.param_groups:  # CosineAnnealingLR(T_max=ca_epochs), per epoch
                group["lr"] = lr * (1 + math.cos(math.pi * epoch / c.ca_epochs)) / 2
            x = gaussian_samples(means, covs, c.ca_samples, generator).float()
            y = torch.arange(classes).repeat_interleave(c.ca_samples)
            order = torch.randperm(len(y), generator=generator)
            x, y = x.reshape(-1, x.shape[-1])[order].to(device), y[order].to(device)
            for i in range(classes):
                part = slice(i * c.ca_samples, (i + 1) * c.ca_samples)
                logits = head(x[part])
                if c.logit_norm is not None:
                    logits = task_normalized_logits(logits, slices, c.logit_norm)
                loss = F.cross_entropy(logits, y[part])
                sgd.zero_grad()
                loss.backward()
                sgd.step()
        head.eval()

    @torch.no_grad()
    def predict_features(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The aligned head's logits once it covers the seen classes (else the trained head's)."""
        head = self.aligned if self.aligned.num_classes == self.num_seen_classes else None
        if head is None:
            return super().predict_features(features)
        return {"cnn": self.loss_fn.adjust_logits(head(features))}
