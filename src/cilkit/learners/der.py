"""DER: dynamically expandable representation (not Dark Experience Replay)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cilkit.backbones import BranchedNet, ExpandableLinear
from cilkit.components.weight_align import align_weights
from cilkit.config.schema import LearnerConfig
from cilkit.contract import Batch, Parameters, StepOutput, TaskContext
from cilkit.learners.base import Learner, register_learner


@dataclass(frozen=True)
class DERConfig(LearnerConfig):
    name: str = "der"
    aux_weight: float = 1.0
    """lambda_a, the weight of the auxiliary loss on the new extractor (0 on the first task)."""
    weight_align: bool = True
    """Align the new classes' weight norms to the old classes' after each task (PyCIL's DER)."""


@register_learner("der")
class DER(Learner):
    """DER (Yan et al., CVPR 2021): a new extractor per task, the old ones frozen, one head.

    Yan, Xie & He, "DER: Dynamically Expandable Representation for Class Incremental
    Learning", CVPR 2021. At each task after the first, a new extractor (initialised from the
    newest one, as the authors' and PyCIL's code do) is added beside the previous extractors,
    which are frozen and kept in eval mode (:class:`~cilkit.backbones.Frozen`); the head sees
    their concatenated features. The loss is the cross-entropy of the head plus ``aux_weight``
    times the cross-entropy of an auxiliary head on the new extractor's features over the new
    classes plus one "old" class. After training, the new classes' weights are aligned to the
    old ones' norms (PyCIL's ``der.py``; the paper instead re-trains the classifier on balanced
    data). Channel pruning (the paper's mask-based, parameter-saving part) is not implemented:
    every extractor is kept whole.
    """

    config_cls = DERConfig
    cfg: DERConfig
    needs_memory = True

    def __init__(self, cfg, network, memory_cfg, build_backbone=None) -> None:
        if build_backbone is None:
            raise ValueError("DER builds a new extractor per task: pass build_backbone")
        network = self.branched_network(cfg, network, build_backbone)
        super().__init__(cfg, network, memory_cfg, build_backbone)
        self.aux_head = ExpandableLinear(network.out_dim)

    @staticmethod
    def branched_network(cfg, network, build_backbone) -> BranchedNet:
        """The run's network as the first branch of a multi-branch network."""
        return BranchedNet(network.backbone, network.head, build_backbone)

    def before_task(self, ctx: TaskContext) -> None:
        if ctx.info.num_old_classes:
            self.network.add_branch()
        super().before_task(ctx)
        self.aux_head = ExpandableLinear(self.network.out_dim).to(self.class_means.device)
        if ctx.info.num_old_classes:
            self.aux_head.expand(ctx.info.num_new_classes + 1)

    def configure_training(self, ctx: TaskContext) -> Parameters:
        return [*super().configure_training(ctx), *self.aux_head.parameters()]

    def training_step(self, batch: Batch) -> StepOutput:
        features, logits = self.forward_train(batch.x)
        ce = self.classification_loss(logits, batch.y, features)
        if not self.num_old_classes:
            return StepOutput(ce, {"ce": ce.detach()}, logits)
        aux_logits = self.aux_head(features[:, -self.network.out_dim :])
        aux_targets = torch.clamp(batch.y - self.num_old_classes + 1, min=0)
        aux = F.cross_entropy(aux_logits.float(), aux_targets)
        loss = ce + self.cfg.aux_weight * aux
        return StepOutput(loss, {"ce": ce.detach(), "aux": aux.detach()}, logits)

    def after_task(self, ctx: TaskContext) -> None:
        if self.cfg.weight_align and self.num_old_classes:
            align_weights(self.network.head, self.num_old_classes)
        super().after_task(ctx)
