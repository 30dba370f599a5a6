"""Two-stage rebalancing for long-tailed CIL (Liu et al., "Long-Tailed Class Incremental
Learning", ECCV 2022): after a task's normal training, a class-balanced stage on frozen features.

- ``lws`` (learnable weight scaling), as in the authors' code (xialeiliu/Long-Tailed-CIL,
  ``src/approach/lucir_2stage.py``): one scale per class, created at 1 when the class arrives
  and kept across tasks. Every stage 2 re-trains all scales from their previous values together
  with the newest classes' classifier rows (and a learned cosine scale), the scales at
  ``lr / lr_factor``, with a cosine schedule, momentum and weight decay, on class-aware batches
  (4 samples per class visit). The scales multiply the logits at evaluation and in stage 2 only:
  the next task's training and its distillation teacher see unscaled logits. Where the code
  differs from itself we chose: its first stage-2 epoch trains the scales at the full ``lr``
  (their optimiser is built with one rate and the ``/ lr_factor`` is applied from the second
  epoch on); here the scales' rate is ``lr / lr_factor`` throughout.
- ``lws_fold`` (cilkit 0.1): trains the scales alone and folds them into a linear head's rows
  (a cosine head keeps them in its ``class_scale``), so later training, distillation and WA's
  weight aligning see the scaled rows.
- ``crt`` (classifier re-training, Kang et al. 2020): re-initialises the classifier and trains it.

Any learner turns it on with ``learner.rebalance``; the engine runs the stage it returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from cilkit.backbones.heads import ExpandableLinear
from cilkit.config.schema import OptimConfig, RebalanceConfig
from cilkit.data.samplers import ClassAwareSamplerConfig, create_sampler

if TYPE_CHECKING:
    from cilkit.engine.data import Batch
    from cilkit.learners.base import Learner, StepOutput, TaskContext, TrainingStage

LIU_SAMPLER = ClassAwareSamplerConfig(samples_per_class=4)
"""Liu et al.'s stage-2 sampler: class-aware, 4 consecutive samples per class visit."""


class TwoStageRebalance(nn.Module):
    """Builds the class-balanced stage of each task and keeps the LWS scales.

    Args:
        cfg: the rebalancing config.
    """

    def __init__(self, cfg: RebalanceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sampler = create_sampler(cfg.sampler or LIU_SAMPLER)
        self.register_buffer("lws_scale", torch.ones(0))
        """``lws``: the learned per-class scales, applied to the logits at evaluation."""

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The evaluation logits: scaled by the LWS scales (``lws``); unchanged otherwise."""
        if self.cfg.method != "lws" or not len(self.lws_scale):
            return logits
        n = logits.shape[1]
        scale = self.lws_scale[:n]
        if len(scale) < n:  # classes added since the last stage 2 keep a scale of 1
            scale = torch.cat([scale, scale.new_ones(n - len(scale))])
        return logits * scale.to(logits.dtype)

    def stage(self, learner: Learner, ctx: TaskContext) -> TrainingStage:
        """The balanced stage of the task ``ctx`` describes."""
        from cilkit.learners.base import TrainingStage

        network = learner.network
        optim = OptimConfig(
            lr=self.cfg.lr,
            momentum=self.cfg.momentum,
            weight_decay=self.cfg.weight_decay,
            scheduler="cosine",
            milestones=(),
        )

        def backbone_eval(epoch: int) -> None:
            network.backbone.eval()  # batch-norm statistics stay those of the first stage

        build = {"lws": self._lws, "lws_fold": self._lws_fold, "crt": self._crt}[self.cfg.method]
        step, params, finish = build(learner, ctx)
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

    # ---- the three forms ---------------------------------------------------------------------
    def _lws(self, learner: Learner, ctx: TaskContext):
        network, head = learner.network, learner.network.head
        old, seen = ctx.info.num_old_classes, ctx.info.num_seen_classes
        device = head.weight.device
        grown = torch.ones(seen, device=device)
        grown[: min(len(self.lws_scale), seen)] = self.lws_scale[:seen].to(device)
        scale = nn.Parameter(grown)
        new_weight = nn.Parameter(head.weight[old:].detach().clone())
        new_bias = None if head.bias is None else nn.Parameter(head.bias[old:].detach().clone())
        rows = [new_weight] + ([new_bias] if new_bias is not None else [])
        sigma = getattr(head, "sigma", None)
        if isinstance(sigma, nn.Parameter) and sigma.requires_grad:
            rows.append(sigma)  # LUCIR's shared scale belongs to the newest head in their code

        def step(batch: Batch) -> StepOutput:
            with torch.no_grad():
                features = network.forward_features(batch.x)
            weights = {"weight": torch.cat([head.weight[:old].detach(), new_weight])}
            if new_bias is not None:
                weights["bias"] = torch.cat([head.bias[:old].detach(), new_bias])
            logits = functional_call(head, weights, (features,)).float() * scale
            loss = F.cross_entropy(logits, batch.y)
            return _output(loss, "lws", logits)

        def finish() -> None:
            with torch.no_grad():
                head.weight[old:] = new_weight.detach()
                if new_bias is not None:
                    head.bias[old:] = new_bias.detach()
            self.lws_scale = scale.detach().clone()

        groups = [{"params": rows}, {"params": [scale], "lr_scale": 1.0 / self.cfg.lr_factor}]
        return step, groups, finish

    def _lws_fold(self, learner: Learner, ctx: TaskContext):
        network, head = learner.network, learner.network.head
        scale = nn.Parameter(torch.ones(head.num_classes, device=head.weight.device))

        def step(batch: Batch) -> StepOutput:
            with torch.no_grad():
                logits = network.forward_head(network.forward_features(batch.x))
            logits = logits.float() * scale
            loss = F.cross_entropy(logits, batch.y)
            return _output(loss, "lws", logits)

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

        return step, [scale], finish

    def _crt(self, learner: Learner, ctx: TaskContext):
        network, head = learner.network, learner.network.head
        with torch.no_grad():
            head._init_rows(head.weight.data, None if head.bias is None else head.bias.data)
            head.class_scale.fill_(1.0)

        def step(batch: Batch) -> StepOutput:
            with torch.no_grad():
                features = network.forward_features(batch.x)
            logits = network.forward_head(features)
            loss = F.cross_entropy(logits.float(), batch.y)
            return _output(loss, "crt", logits)

        return step, [p for p in head.parameters() if p.requires_grad], None


def _output(loss: torch.Tensor, name: str, logits: torch.Tensor) -> StepOutput:
    from cilkit.learners.base import StepOutput

    return StepOutput(loss, {name: loss.detach()}, logits)
