"""LUCIR: learning a unified classifier incrementally via rebalancing."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cilkit.components.classifier import classifier_step
from cilkit.config.schema import LearnerConfig, OptimConfig
from cilkit.contract import Batch, Parameters, StageTime, StepOutput, TaskContext, TrainingStage
from cilkit.learners.base import Learner, register_learner


@dataclass(frozen=True)
class LUCIRConfig(LearnerConfig):
    name: str = "lucir"
    lamda: float = 5.0
    """lambda_base of the less-forget constraint (the paper: 5 on CIFAR-100, 10 on ImageNet)."""
    adapt_lamda: bool = True
    """Weight the constraint by lambda_base * sqrt(old classes / new classes) (Eq. 7)."""
    K: int = 2
    """New-class scores taken as hard negatives by the margin ranking loss."""
    dist: float = 0.5
    """Margin m of the margin ranking loss."""
    lw_mr: float = 1.0
    """Weight of the margin ranking loss."""
    imprint: bool = True
    """Initialise the new classes' weights from their normalised feature means (imprinting)."""
    class_balanced_finetuning: bool = False
    """After each task, fine-tune the classifier on the (class-balanced) exemplar memory."""
    cbf_epochs: int = 20
    cbf_lr: float = 0.01
    cbf_milestones: tuple[int, ...] = (10,)


@register_learner("lucir")
class LUCIR(Learner):
    """LUCIR (Hou et al., CVPR 2019): cosine classifier, less-forget, margin ranking.

    Hou et al., "Learning a Unified Classifier Incrementally via Rebalancing", CVPR 2019;
    details as in the authors' code (hshustc/CVPR19_Incremental_Learning, ``*_MR_LF``):

    - the cosine head (``sigma * cos``, sigma learned and shared) over features taken before the
      last block's ReLU; the previous tasks' class weights are frozen (their chunks get no
      gradient), sigma and the new weights train;
    - new classes' weights are imprinted: the mean of their normalised features under the
      current model, normalised, times the mean norm of the old weights;
    - less-forget: ``lamda * (1 - cos(f, f_old))`` on the normalised features of the new and old
      network, ``lamda = lambda_base * sqrt(old / new classes)``;
    - margin ranking: for each old-class sample, its ground-truth cosine should exceed the ``K``
      highest new-class cosines by ``dist`` (``MarginRankingLoss``), weighted by ``lw_mr``;
    - optional class-balanced finetuning of the classifier on the memory, as a stage after
      ``after_task`` (the authors' ``cbf_*`` scripts: 20 epochs, lr 0.01, decay at 10).

    sigma starts at ``backbone.cosine_scale`` (the authors: 1) and is not kept positive (as in
    the authors' code and PyCIL). In short schedules it can cross zero and invert the
    classifier; the log then warns (``docs/REPRODUCIBILITY.md``, "The zoo on real data").
    """

    config_cls = LUCIRConfig
    cfg: LUCIRConfig
    head = "cosine"
    needs_memory = True
    keeps_old_network = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.network.backbone.last_relu = False  # features can be negative (Sec. 4.1)

    @property
    def lamda(self) -> float:
        if not self.cfg.adapt_lamda or not self.num_old_classes:
            return self.cfg.lamda
        new = self.num_seen_classes - self.num_old_classes
        return self.cfg.lamda * math.sqrt(self.num_old_classes / new)

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        if self.cfg.imprint and self.num_old_classes:
            self._imprint(ctx)

    @torch.no_grad()
    def _imprint(self, ctx: TaskContext) -> None:
        head = self.network.head
        old_norm = head.weight[: self.num_old_classes].norm(dim=1).mean()
        features = self.features_fn(ctx)
        rows = [
            F.normalize(F.normalize(features(ctx.class_indices(c)), dim=1).mean(0), dim=0)
            for c in ctx.info.new_classes
        ]
        head.weights[-1].copy_(torch.stack(rows).to(head.weights[-1]) * old_norm)

    def configure_training(self, ctx: TaskContext) -> Parameters:
        """The previous tasks' class weights stay fixed; everything else trains."""
        for i, chunk in enumerate(self.network.head.weights):
            chunk.requires_grad_(i == len(self.network.head.weights) - 1)
        return [p for p in self.network.parameters() if p.requires_grad]

    def training_step(self, batch: Batch) -> StepOutput:
        head = self.network.head
        features = self.network.forward_features(batch.x)
        logits = head(features)
        ce = self.classification_loss(logits, batch.y, features)
        if self.old_network is None:
            return StepOutput(ce, {"ce": ce.detach()}, logits)
        with torch.no_grad():
            old_features = self.old_network.forward_features(batch.x)
        less_forget = self.lamda * (1 - F.cosine_similarity(features, old_features)).mean()
        margin = self.margin_ranking(head.cosine(features), batch.y)
        loss = ce + less_forget + self.cfg.lw_mr * margin
        terms = {"ce": ce.detach(), "less_forget": less_forget.detach(), "mr": margin.detach()}
        return StepOutput(loss, terms, logits)

    def margin_ranking(self, cosines: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``mean max(0, dist - cos_y + cos_new_k)`` over old-class samples and their ``K``
        highest new-class cosines; 0 when the batch holds no old-class sample."""
        old = self.num_old_classes
        hard = targets < old
        if not hard.any():
            return cosines.sum() * 0.0
        gt = cosines[hard].gather(1, targets[hard, None])
        k = min(self.cfg.K, cosines.shape[1] - old)
        novel = cosines[hard, old:].topk(k, dim=1).values
        return F.relu(self.cfg.dist - gt + novel).mean()

    def stages(self, ctx: TaskContext, when: StageTime) -> list[TrainingStage]:
        stages = super().stages(ctx, when)
        if self.cfg.class_balanced_finetuning and when == "after_task" and self.num_old_classes:
            stages.append(self._class_balanced_finetuning())
        return stages

    def _class_balanced_finetuning(self) -> TrainingStage:
        network = self.network

        def before_epoch(epoch: int) -> None:
            network.backbone.eval()  # frozen features, running statistics unchanged
            for chunk in network.head.weights:  # every class's weights are finetuned
                chunk.requires_grad_(True)

        return TrainingStage(
            name="class-balanced finetuning",
            parameters=list(network.head.parameters()),
            epochs=self.cfg.cbf_epochs,
            optim=OptimConfig(
                lr=self.cfg.cbf_lr, weight_decay=5e-4, milestones=self.cfg.cbf_milestones
            ),
            step=classifier_step(network, "cbf"),
            indices=self.memory.indices(),
            before_epoch=before_epoch,
        )
