"""PaCo: parametric contrastive learning, with a momentum encoder, a queue and class centres."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.config.schema import FieldError, LearnerConfig
from cilkit.contract import Batch, Parameters, StepOutput, TaskContext
from cilkit.data.strong_augment import paco_strong_view, simclr_cifar_view
from cilkit.learners.base import Learner, register_learner
from cilkit.losses import paco_loss


@dataclass(frozen=True)
class PaCoConfig(LearnerConfig):
    name: str = "paco"
    alpha: float = 0.01
    """Weight of the same-class samples among the positives (the CIFAR scripts: 0.01)."""
    beta: float = 1.0
    """Weight of the anchor's own class centre among the positives."""
    gamma: float = 1.0
    """Weight of the samples in the softmax's denominator."""
    temperature: float = 0.05
    """Temperature of the sample similarities (``--moco-t``; the CIFAR scripts: 0.05)."""
    queue_size: int = 1024
    """Keys kept in the queue (``--moco-k``); 0 = the batch's keys only."""
    momentum: float = 0.999
    """EMA momentum of the key encoder (``--moco-m``)."""
    proj_dim: int = 32
    """Output width of the projection MLP (``--moco-dim``; the CIFAR scripts: 32)."""
    logit_adjust: bool = True
    """Add the log class prior of the task's training data to the centres' logits in the loss
    (the authors' ``PaCoLoss``); prediction uses the plain logits."""
    augment: Literal["paco", "preset"] = "paco"
    """paco: the authors' CIFAR views (query: crop, flip, AutoAugment, Cutout; key: SimCLR's);
    preset: two views of the dataset's own augmentation preset."""

    def __post_init__(self) -> None:
        for key in ("alpha", "gamma", "queue_size"):
            if getattr(self, key) < 0:
                raise FieldError(key, "must be >= 0")
        if self.beta <= 0:
            raise FieldError("beta", "must be > 0 (the class centre is every anchor's positive)")
        if self.temperature <= 0:
            raise FieldError("temperature", "must be > 0")
        if not 0 <= self.momentum <= 1:
            raise FieldError("momentum", "must be in [0, 1]")
        if self.proj_dim < 1:
            raise FieldError("proj_dim", "must be >= 1")
        if self.augment not in ("paco", "preset"):
            raise FieldError("augment", f"'{self.augment}' is not paco or preset")
        if self.loss.name != "ce":
            raise FieldError("loss", "PaCo's loss is its own (set alpha, beta, gamma); keep ce")


@register_learner("paco")
class PaCo(Learner):
    """PaCo (Cui et al., ICCV 2021): supervised contrast with learnable class centres.

    Cui et al., "Parametric Contrastive Learning". Each image gives two views: the query view
    goes through the network (backbone and linear head) and a projection MLP (Linear, BN, ReLU,
    Linear to ``proj_dim``); the key view through a momentum copy of backbone and MLP. The
    loss (:func:`cilkit.losses.paco_loss`) contrasts each normalised query with the other
    queries, the keys and a FIFO queue of past keys, and with the class centres: the linear
    classifier's weights, whose logits (plus the log class prior: the authors' logit
    adjustment, which CIFAR uses too) enter the same softmax. Same-class samples are positives
    with weight ``alpha``, the own centre with ``beta``; samples weigh ``gamma`` in the
    denominator. Prediction is the plain linear classifier.

    Details from the authors' code (dvlab-research/Parametric-Contrastive-Learning,
    ``PaCo/LT``: ``paco_cifar.py``, ``losses.py``, ``moco/builder.py``, ``sh/CIFAR100_*.sh``):
    alpha 0.01, beta = gamma = 1, temperature 0.05, queue 1024, momentum 0.999, MLP to 32 on
    ResNet-32's 64 features; the key encoder is updated by EMA (parameters only, BN in train
    mode, no gradient) and its keys are enqueued with their labels. The key encoder's linear
    head, which the authors also average but never use, is left out. The queue starts empty
    (the authors fill it with random vectors and labels, negatives and spurious positives for
    its first K / batch steps) and is emptied at each task's start, so it only holds keys of
    the task's training data (the exemplar budget stays honest); class ids are global. The
    key encoder continues its average across tasks. Under torchrun each process keeps the
    queue of its own shard (the authors gather every process's keys, and shuffle the key batch
    across GPUs for BN); at the task's end every process takes rank 0's.
    """

    config_cls = PaCoConfig
    cfg: PaCoConfig

    def __init__(self, cfg, network, memory_cfg, build_backbone=None) -> None:
        super().__init__(cfg, network, memory_cfg, build_backbone)
        self.needs_raw_batch = cfg.augment == "paco"
        self.num_views = 1 if cfg.augment == "paco" else 2
        d = network.feature_dim
        self.projector = nn.Sequential(
            nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True), nn.Linear(d, cfg.proj_dim)
        )
        self.key_encoder = nn.ModuleDict(
            {
                "backbone": copy.deepcopy(network.backbone),
                "projector": copy.deepcopy(self.projector),
            }
        )
        self.key_encoder.requires_grad_(False)
        self.register_buffer("queue", torch.zeros(cfg.queue_size, cfg.proj_dim))
        self.register_buffer("queue_labels", torch.full((cfg.queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("log_prior", torch.zeros(0), persistent=False)
        self._normalize = None

    def query_modules(self) -> list[nn.Module]:
        """The trained counterparts of the key encoder, in its order."""
        return [self.network.backbone, self.projector]

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        self.queue.zero_()
        self.queue_labels.fill_(-1)
        self.queue_ptr.zero_()

    def before_training(self, ctx: TaskContext, indices: torch.Tensor) -> None:
        super().before_training(ctx, indices)
        counts = torch.bincount(ctx.train.targets_cpu[indices], minlength=self.num_seen_classes)
        prior = counts.float() / counts.sum().clamp(min=1)
        self.log_prior = torch.log(prior + 1e-9).to(self.queue.device)
        self._normalize = ctx.train.transform.normalize

    def configure_training(self, ctx: TaskContext) -> Parameters:
        self.key_encoder.requires_grad_(False)  # moved by EMA only
        params = list(self.network.parameters()) + list(self.projector.parameters())
        return [p for p in params if p.requires_grad]

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The authors' CIFAR query and key views from the raw images (``augment: paco``)."""
        if self.needs_raw_batch:
            batch.x = self._normalize(paco_strong_view(batch.raw, generator))
            batch.views = (self._normalize(simclr_cifar_view(batch.raw, generator)),)
        return batch

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised keys of the momentum encoder (no gradient)."""
        with torch.no_grad():
            k = self.key_encoder["projector"](self.key_encoder["backbone"](x))
            return F.normalize(k.float(), dim=1)

    def training_step(self, batch: Batch) -> StepOutput:
        features, logits = self.forward_train(batch.x)
        q = F.normalize(self.projector(features).float(), dim=1)
        k = self.keys(batch.views[0])
        n = len(batch.y)
        valid = torch.cat(
            [torch.ones(2 * n, dtype=torch.bool, device=q.device), self.queue_labels >= 0]
        )
        loss = paco_loss(
            torch.cat([q, k, self.queue.clone()]),
            torch.cat([batch.y, batch.y, self.queue_labels.clone()]),
            n,
            logits,
            self.cfg.alpha,
            self.cfg.beta,
            self.cfg.gamma,
            self.cfg.temperature,
            self.log_prior[: logits.shape[1]] if self.cfg.logit_adjust else None,
            valid,
        )
        self.enqueue(k, batch.y)
        return StepOutput(loss, {"paco": loss.detach()}, logits)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the keys over the oldest entries (FIFO, wrapping around)."""
        size = self.cfg.queue_size
        if not size:
            return
        keys, labels = keys[-size:], labels[-size:]
        slots = (self.queue_ptr + torch.arange(len(keys), device=self.queue.device)) % size
        self.queue[slots] = keys.to(self.queue)
        self.queue_labels[slots] = labels.to(self.queue_labels.device)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)

    @torch.no_grad()
    def after_step(self) -> None:
        """The key encoder moves to ``m * key + (1 - m) * query``."""
        key = list(self.key_encoder["backbone"].parameters())
        key += list(self.key_encoder["projector"].parameters())
        query = [p.detach() for m in self.query_modules() for p in m.parameters()]
        torch._foreach_mul_(key, self.cfg.momentum)
        torch._foreach_add_(key, query, alpha=1 - self.cfg.momentum)
