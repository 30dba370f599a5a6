"""FOSTER: feature boosting with a second extractor, then compression back to one."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cilkit.backbones import BranchedNet, ExpandableLinear
from cilkit.components.weight_align import align_weights
from cilkit.config.schema import FieldError, LearnerConfig, OptimConfig
from cilkit.contract import Batch, Parameters, StageTime, StepOutput, TaskContext, TrainingStage
from cilkit.learners.base import Learner, register_learner
from cilkit.losses import effective_number_weights, kd_loss


@dataclass(frozen=True)
class FOSTERConfig(LearnerConfig):
    name: str = "foster"
    beta1: float = 0.96
    """Class-balanced factor of the boosting stage's logit adjustment (effective number)."""
    beta2: float = 0.97
    """Class-balanced factor of the compression stage's balanced distillation."""
    lambda_okd: float = 1.0
    """Weight of the distillation of the old classes' logits during boosting."""
    temperature: float = 2.0
    compression_epochs: int = 130
    compression_lr: float = 0.1
    teacher_wa: bool = False
    """Weight-align the boosted model before compression (the authors' ``is_teacher_wa``)."""
    student_wa: bool = False
    """Weight-align the compressed model (the authors' ``is_student_wa``)."""

    def __post_init__(self) -> None:
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise FieldError(key, "must be in [0, 1)")
        if self.compression_epochs < 1:
            raise FieldError("compression_epochs", "must be >= 1")
        if self.compression_lr <= 0:
            raise FieldError("compression_lr", "must be > 0")


def balanced_kd(
    student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Balanced knowledge distillation: the teacher's softened distribution re-weighted per class
    by ``weights`` and renormalised, then the cross-entropy to the student's."""
    soft = F.softmax(teacher.float() / temperature, dim=1) * weights
    soft = soft / soft.sum(dim=1, keepdim=True)
    return -(soft * F.log_softmax(student.float() / temperature, dim=1)).sum(dim=1).mean()


@register_learner("foster")
class FOSTER(Learner):
    """FOSTER (Wang et al., ECCV 2022): feature boosting, then feature compression.

    Wang, Zhou, Ye & Zhan, "FOSTER: Feature Boosting and Compression for Class-Incremental
    Learning"; details as in the authors' code (PyCIL's ``foster.py``, which the authors' own
    repository G-U-N/ECCV22-FOSTER is built on). The first task trains one extractor with the
    classification loss. Every later task:

    - **Boosting** (the main training): a new extractor, initialised from the old one, beside
      the old extractor (frozen, in eval mode); the head over both features keeps the old rows
      on the old features (the authors' ``oofc: ft``). The loss is the cross-entropy of the
      logits divided by class-balanced weights (effective number with ``beta1`` of the classes'
      training counts: memory for old classes, all data for new ones), plus the cross-entropy of
      a feature-enhancement head on the new extractor's features over every seen class, plus
      ``lambda_okd`` times the distillation (T = 2) of the old classes' logits from the previous
      model.
    - **Compression** (a stage after training, before the memory update): a fresh single
      extractor initialised from the old one, with the old head's rows and new rows, is trained
      on the same data by balanced distillation (``beta2``) from the boosted model (SGD lr 0.1,
      no weight decay, cosine, 130 epochs). It then replaces the network, so every task ends with
      one extractor, and the memory, class means, evaluation and the next task use it.

    PyCIL evaluates the boosted two-extractor model at each task and logs the compressed one
    beside it; cilkit evaluates the compressed model that the method carries on. Differs from
    ``finetune`` by the memory, the two stages and the distillations.
    """

    config_cls = FOSTERConfig
    cfg: FOSTERConfig
    needs_memory = True
    keeps_old_network = True

    def __init__(self, cfg, network, memory_cfg, build_backbone=None) -> None:
        if build_backbone is None:
            raise ValueError("FOSTER builds a new extractor per task: pass build_backbone")
        network = BranchedNet(network.backbone, network.head, build_backbone)
        super().__init__(cfg, network, memory_cfg, build_backbone)
        self.fe_head = ExpandableLinear(network.out_dim)
        self.register_buffer("boost_weights", torch.ones(0))
        self.register_buffer("compress_weights", torch.ones(0))

    def before_task(self, ctx: TaskContext) -> None:
        if ctx.info.num_old_classes:
            self.network.add_branch()
        super().before_task(ctx)
        self.fe_head = ExpandableLinear(self.network.out_dim).to(self.class_means.device)
        if ctx.info.num_old_classes:
            self.fe_head.expand(ctx.info.num_seen_classes)

    def before_training(self, ctx: TaskContext, indices: torch.Tensor) -> None:
        super().before_training(ctx, indices)
        counts = torch.bincount(ctx.train.targets_cpu[indices], minlength=self.num_seen_classes)
        device = self.class_means.device
        self.boost_weights = effective_number_weights(counts, self.cfg.beta1).to(device)
        self.compress_weights = effective_number_weights(counts, self.cfg.beta2).to(device)

    def configure_training(self, ctx: TaskContext) -> Parameters:
        return [*super().configure_training(ctx), *self.fe_head.parameters()]

    def training_step(self, batch: Batch) -> StepOutput:
        features, logits = self.forward_train(batch.x)
        if self.old_network is None:
            ce = self.classification_loss(logits, batch.y, features)
            return StepOutput(ce, {"ce": ce.detach()}, logits)
        ce = F.cross_entropy(logits.float() / self.boost_weights, batch.y)
        fe_logits = self.fe_head(features[:, -self.network.out_dim :])
        fe = F.cross_entropy(fe_logits.float(), batch.y)
        kd = kd_loss(
            logits[:, : self.num_old_classes], self.old_logits(batch.x), self.cfg.temperature
        )
        loss = ce + fe + self.cfg.lambda_okd * kd
        return StepOutput(loss, {"ce": ce.detach(), "fe": fe.detach(), "kd": kd.detach()}, logits)

    def stages(self, ctx: TaskContext, when: StageTime) -> list[TrainingStage]:
        stages = super().stages(ctx, when)
        if when == "after_training" and self.num_old_classes:
            stages.append(self._compression())
        return stages

    def _compression(self) -> TrainingStage:
        teacher = self.network
        old = self.old_network.module  # the previous task's compressed model
        extractor = self.build_backbone().to(self.class_means.device)
        extractor.load_state_dict(old.backbone.state_dict())
        head = copy.deepcopy(old.head).requires_grad_(True)
        head.expand(self.num_seen_classes - self.num_old_classes)
        student = BranchedNet(extractor, head, self.build_backbone).to(self.class_means.device)
        weights, temperature = self.compress_weights, self.cfg.temperature

        def before_epoch(epoch: int) -> None:
            teacher.eval()  # the boosted model only gives targets
            student.train()

        def step(batch: Batch) -> StepOutput:
            logits = student(batch.x)
            with torch.no_grad():
                target = teacher(batch.x)
            loss = balanced_kd(logits, target, weights, temperature)
            return StepOutput(loss, {"bkd": loss.detach()}, logits)

        def start() -> None:
            if self.cfg.teacher_wa:
                align_weights(teacher.head, self.num_old_classes)

        def finish() -> None:
            if self.cfg.student_wa:
                align_weights(student.head, self.num_old_classes)
            self.network = student

        return TrainingStage(
            name="compression",
            parameters=list(student.parameters()),
            epochs=self.cfg.compression_epochs,
            optim=OptimConfig(
                lr=self.cfg.compression_lr, weight_decay=0.0, scheduler="cosine", milestones=()
            ),
            step=step,
            when="after_training",
            before_epoch=before_epoch,
            start=start,
            finish=finish,
            state=student,
        )
