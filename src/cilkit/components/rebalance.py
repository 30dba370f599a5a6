"""Two-stage rebalancing for long-tailed CIL (Liu et al., "Long-Tailed Class Incremental
Learning", ECCV 2022): after a task's normal training, a class-balanced stage on frozen features.

- ``lws`` (learnable weight scaling): learns one scale per class on the classifier's logits and
  folds it into the linear head's rows (weight and bias; a cosine head keeps it in its
  ``class_scale``); nothing else changes.
- ``crt`` (classifier re-training, Kang et al. 2020): re-initialises the classifier and trains it.

Any learner turns it on with ``learner.rebalance``; the engine runs the stage it returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.backbones.heads import ExpandableLinear
from cilkit.config.schema import OptimConfig, RebalanceConfig, SamplerConfig

if TYPE_CHECKING:
    from cilkit.engine.data import Batch
    from cilkit.learners.base import Learner, TaskContext, TrainingStage


class TwoStageRebalance:
    """Builds the class-balanced stage of each task.

    Args:
        cfg: the rebalancing config.
    """

    def __init__(self, cfg: RebalanceConfig) -> None:
        from cilkit.data.samplers import create_sampler

        self.cfg = cfg
        self.sampler = create_sampler(SamplerConfig(name=cfg.sampler))

    def stage(self, learner: Learner, ctx: TaskContext) -> TrainingStage:
        from cilkit.learners.base import StepOutput, TrainingStage

        network = learner.network
        head = network.head
        optim = OptimConfig(
            lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, scheduler="cosine", milestones=()
        )

        def frozen_features(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return network.forward_features(x)

        def backbone_eval(epoch: int) -> None:
            network.backbone.eval()  # batch-norm statistics stay those of the first stage

        if self.cfg.method == "lws":
            scale = nn.Parameter(torch.ones(head.num_classes, device=head.weight.device))

            def step(batch: Batch) -> StepOutput:
                with torch.no_grad():
                    logits = network.forward_head(frozen_features(batch.x))
                logits = logits.float() * scale
                loss = F.cross_entropy(logits, batch.y)
                return StepOutput(loss, {"lws": loss.detach()}, logits)

            def finish() -> None:
                learned = scale.detach()
                with torch.no_grad():
                    if isinstance(head, ExpandableLinear):
                        # Fold into the rows, so later weight-norm methods (WA) see the scaling.
                        head.weight.mul_(learned[:, None].to(head.weight.dtype))
                        if head.bias is not None:
                            head.bias.mul_(learned.to(head.bias.dtype))
                    else:  # a cosine head normalises its rows: keep the scale beside them
                        head.class_scale.mul_(learned.to(head.class_scale.dtype))

            params = [scale]
        else:
            with torch.no_grad():
                head._init_rows(head.weight.data, None if head.bias is None else head.bias.data)
                head.class_scale.fill_(1.0)

            def step(batch: Batch) -> StepOutput:
                logits = network.forward_head(frozen_features(batch.x))
                loss = F.cross_entropy(logits.float(), batch.y)
                return StepOutput(loss, {"crt": loss.detach()}, logits)

            finish = None
            params = [p for p in head.parameters() if p.requires_grad]
        return TrainingStage(
            name=f"{self.cfg.method} stage",
            parameters=params,
            epochs=self.cfg.epochs,
            optim=optim,
            step=step,
            sampler=self.sampler,
            before_epoch=backbone_eval,
            finish=finish,
        )
