"""MiSLAS: mixup, then classifier re-training with label-aware smoothing and BatchNorm shift."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.components.mixing import mixed_loss, mixup
from cilkit.config.schema import FieldError, LearnerConfig, OptimConfig
from cilkit.contract import Batch, StageTime, StepOutput, TaskContext, TrainingStage
from cilkit.data.samplers import ClassAwareSamplerConfig, create_sampler
from cilkit.learners.base import register_learner
from cilkit.learners.replay import Replay
from cilkit.losses import create_loss
from cilkit.losses.label_aware_smoothing import LabelAwareSmoothingConfig


@dataclass(frozen=True)
class MiSLASConfig(LearnerConfig):
    """MiSLAS options; defaults are the authors' CIFAR-100-LT (IF 100) values."""

    name: str = "mislas"
    mixup_alpha: float = 1.0
    """Beta(alpha, alpha) of stage 1's mixup (authors: 1.0 on CIFAR, 0.2 on ImageNet-LT,
    Places-LT and iNaturalist); 0 = no mixup."""
    stage2_epochs: int = 10
    """Epochs of stage 2 (classifier re-training) after each task's training; 0 = none."""
    stage2_lr: float = 0.1
    """Stage 2's learning rate (cosine to 0): the logit scales train at it, the classifier at
    ``lr_factor`` times it."""
    lr_factor: float = 0.2
    """The classifier's share of ``stage2_lr`` (authors: 0.2 at IF 100, 0.1 at IF 50 and 10)."""
    stage2_weight_decay: float = 2e-4
    stage2_momentum: float = 0.9
    smooth_head: float = 0.4
    """Label-aware smoothing of the most frequent class (IF 100: 0.4; IF 50: 0.3; IF 10: 0.2)."""
    smooth_tail: float = 0.1
    """Label-aware smoothing of the rarest class (IF 100: 0.1; IF 50 and 10: 0.0)."""
    shape: Literal["concave", "linear", "convex", "exp"] = "concave"
    """Form of the smoothing between tail and head (``las`` loss)."""
    power: float | None = None
    """Exponent of the ``exp`` shape."""
    shift_bn: bool = True
    """Stage 2 re-estimates the backbone's BatchNorm statistics (the paper's shift learning);
    false: the backbone stays in eval mode."""
    learn_scales: bool = True
    """Stage 2 also learns one logit scale per class, applied at evaluation (the authors' code's
    ``LearnableWeightScaling``; not in the paper)."""
    samples_per_class: int = 4
    """Stage 2's class-aware sampler: consecutive samples of a class per visit."""

    def __post_init__(self) -> None:
        if self.mixup_alpha < 0:
            raise FieldError("mixup_alpha", "must be >= 0 (0 = no mixup)")
        if self.stage2_epochs < 0:
            raise FieldError("stage2_epochs", "must be >= 0")
        for key in ("stage2_lr", "lr_factor"):
            if getattr(self, key) <= 0:
                raise FieldError(key, "must be > 0")
        if self.stage2_weight_decay < 0:
            raise FieldError("stage2_weight_decay", "must be >= 0")
        if self.samples_per_class < 1:
            raise FieldError("samples_per_class", "must be >= 1")
        self.las()  # smoothing values and shape, with the loss's own one-line errors

    def las(self) -> LabelAwareSmoothingConfig:
        """Stage 2's label-aware smoothing loss."""
        return LabelAwareSmoothingConfig(
            smooth_head=self.smooth_head,
            smooth_tail=self.smooth_tail,
            shape=self.shape,
            power=self.power,
        )


class _Stage2State(nn.Module):
    """Stage 2's own state: the logit scales being learned, and the backbone's BatchNorm layers
    whose statistics it shifts (so mid-stage checkpoints and processes under torchrun agree)."""

    def __init__(self, scale: torch.Tensor, norms: list[nn.Module]) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale)
        self.norms = nn.ModuleList(norms)


@register_learner("mislas")
class MiSLAS(Replay):
    """MiSLAS (Zhong et al., "Improving Calibration for Long-Tailed Recognition", CVPR 2021).

    Stage 1 is each task's normal training with mixup (``lam ~ Beta(alpha, alpha)``, one per
    batch, drawn with the engine's generator) and the configured loss (cross-entropy). Stage 2,
    after the main training, re-trains the classifier over every seen class on the same data
    with label-aware smoothing (``las``: smoothing ``smooth_head`` for the most frequent class
    down to ``smooth_tail`` for the rarest, concave by default) on class-aware batches, while the
    backbone runs without gradient in train mode, so its BatchNorm statistics are re-estimated
    and its convolutions and BatchNorm affine weights stay fixed (shift learning, as the paper and
    the authors' ``train_stage2.py``). As in the authors' code (dvlab-research/MiSLAS), stage 2
    continues from stage 1's classifier (no re-initialisation), trains one logit scale per class
    with it (initialised at 1, at the full ``stage2_lr``; the classifier at ``lr_factor`` of it),
    uses SGD with momentum 0.9, weight decay 2e-4 and a per-epoch cosine schedule, and samples
    4 consecutive images per class visit. Their epoch is cut after about one pass over the data;
    the class-aware sampler here draws exactly one pass's number of samples.

    With one task this is MiSLAS. In class-incremental learning the learner is replay (the new
    classes plus the exemplar memory, when one is configured; finetuning over every seen class
    otherwise), and stage 2 runs after each task's training, before ``after_task``, on the data
    that task trained on, with smoothing from its class counts: the memory and class means are
    then selected with the final network, whose BatchNorm statistics stage 2 shifted (a stage
    after ``after_task`` would leave the class means computed before the shift). The scales
    multiply the logits at evaluation only; the next task trains and re-learns them from 1.
    """

    config_cls = MiSLASConfig
    cfg: MiSLASConfig
    needs_memory = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sampler = create_sampler(
            ClassAwareSamplerConfig(samples_per_class=self.cfg.samples_per_class)
        )
        self.register_buffer("class_scale", torch.ones(0))
        """The per-class logit scales of the last stage 2 (applied at evaluation)."""

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Stage 1's mixup: mix the batch with a permutation of itself."""
        if self.cfg.mixup_alpha > 0:
            batch.x, _, y_b, lam = mixup(batch.x, batch.y, self.cfg.mixup_alpha, generator)
            batch.extra["mixup"] = (y_b, lam)
        return batch

    def training_step(self, batch: Batch) -> StepOutput:
        if "mixup" not in batch.extra:
            return super().training_step(batch)
        y_b, lam = batch.extra["mixup"]
        features, logits = self.forward_train(batch.x)

        def loss_fn(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.classification_loss(z, y, features)

        loss = mixed_loss(loss_fn, logits, batch.y, y_b, lam)
        return StepOutput(loss, {"cls": loss.detach()}, logits)

    def stages(self, ctx: TaskContext, when: StageTime) -> list[TrainingStage]:
        stages = super().stages(ctx, when)
        if when == "after_training" and self.cfg.stage2_epochs and len(ctx.indices):
            stages.append(self._stage2(ctx))
        return stages

    def _stage2(self, ctx: TaskContext) -> TrainingStage:
        cfg, network = self.cfg, self.network
        counts = torch.bincount(ctx.train.targets_cpu[ctx.indices], minlength=self.num_seen_classes)
        las = create_loss(cfg.las())
        las.set_class_counts(counts)
        norms = [
            m for m in network.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        state = _Stage2State(torch.ones(self.num_seen_classes), norms if cfg.shift_bn else [])
        head = [p for p in network.head.parameters() if p.requires_grad]
        params: list = [{"params": head, "lr_scale": cfg.lr_factor}]
        if cfg.learn_scales:
            params.append({"params": [state.scale]})

        def step(batch: Batch) -> StepOutput:
            with torch.no_grad():  # BatchNorm in train mode still updates its statistics
                features = network.forward_features(batch.x)
            logits = network.forward_head(features).float()
            if cfg.learn_scales:
                logits = logits * state.scale
            loss = las(logits, batch.y)
            return StepOutput(loss, {"las": loss.detach()}, logits)

        def finish() -> None:
            if cfg.learn_scales:
                self.class_scale = state.scale.detach().clone()

        return TrainingStage(
            name="mislas stage 2",
            parameters=params,
            epochs=cfg.stage2_epochs,
            optim=OptimConfig(
                lr=cfg.stage2_lr,
                momentum=cfg.stage2_momentum,
                weight_decay=cfg.stage2_weight_decay,
                scheduler="cosine",
                milestones=(),
            ),
            step=step,
            when="after_training",
            sampler=self.sampler,
            before_epoch=lambda epoch: network.backbone.train(cfg.shift_bn),
            finish=finish,
            state=state,
        )

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """As replay's, with the CNN logits scaled by stage 2's learned scales."""
        out = super().predict(x)
        if len(self.class_scale):
            n = out["cnn"].shape[1]
            scale = F.pad(self.class_scale[:n], (0, max(n - len(self.class_scale), 0)), value=1.0)
            out["cnn"] = out["cnn"] * scale.to(out["cnn"].dtype)
        return out
