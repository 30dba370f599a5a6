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

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.backbones import ExpandableLinear, IncrementalNet
from cilkit.components.classifier import classifier_step
from cilkit.config.schema import OptimConfig, RebalanceConfig
from cilkit.contract import Batch, StepOutput, TaskContext, TrainingStage
from cilkit.data.samplers import ClassAwareSamplerConfig, create_sampler

LIU_SAMPLER = ClassAwareSamplerConfig(samples_per_class=4)
"""Liu et al.'s stage-2 sampler: class-aware, 4 consecutive samples per class visit."""


class _Scales(nn.Module):
    """A stage's learned per-class scales (saved with mid-stage checkpoints)."""

    def __init__(self, initial: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(initial)


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

    def stage(self, network: IncrementalNet, ctx: TaskContext) -> TrainingStage:
        """The balanced stage of ``network`` for the task ``ctx`` describes (built without
        changing anything)."""
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
        return TrainingStage(
            name=f"{self.cfg.method} stage",
            epochs=self.cfg.epochs,
            optim=optim,
            sampler=self.sampler,
            before_epoch=backbone_eval,
            **build(network, ctx),
        )

    # ---- the three forms ---------------------------------------------------------------------
    def _lws(self, network: IncrementalNet, ctx: TaskContext) -> dict:
        head = network.head
        seen = ctx.info.num_seen_classes
        initial = torch.ones(seen, device=self.lws_scale.device)
        kept = min(len(self.lws_scale), seen)
        initial[:kept] = self.lws_scale[:kept]
        state = _Scales(initial)
        newest = [head.weights[-1]] + ([head.biases[-1]] if head.has_bias else [])
        sigma = getattr(head, "sigma", None)
        if isinstance(sigma, nn.Parameter) and sigma.requires_grad:
            newest.append(sigma)  # LUCIR's shared scale belongs to the newest head in their code

        def step(batch: Batch) -> StepOutput:
            with torch.no_grad():
                features = network.forward_features(batch.x)
            logits = network.forward_head(features).float() * state.scale
            loss = F.cross_entropy(logits, batch.y)
            return StepOutput(loss, {"lws": loss.detach()}, logits)

        def finish() -> None:
            self.lws_scale = state.scale.detach().clone()

        groups = [
            {"params": newest},
            {"params": [state.scale], "lr_scale": 1.0 / self.cfg.lr_factor},
        ]
        return {"parameters": groups, "step": step, "finish": finish, "state": state}

    def _lws_fold(self, network: IncrementalNet, ctx: TaskContext) -> dict:
        head = network.head
        state = _Scales(torch.ones(head.num_classes, device=head.class_scale.device))

        def step(batch: Batch) -> StepOutput:
            with torch.no_grad():
                logits = network.forward_head(network.forward_features(batch.x))
            logits = logits.float() * state.scale
            loss = F.cross_entropy(logits, batch.y)
            return StepOutput(loss, {"lws": loss.detach()}, logits)

        def finish() -> None:
            learned = state.scale.detach()
            if isinstance(head, ExpandableLinear):
                # Fold into the rows, so later weight-norm methods (WA) see the scaling.
                head.scale_weights_(learned)
            else:  # a cosine head normalises its rows: keep the scale beside them
                head.scale_rows(learned)

        return {"parameters": [state.scale], "step": step, "finish": finish, "state": state}

    def _crt(self, network: IncrementalNet, ctx: TaskContext) -> dict:
        head = network.head
        params = [p for p in head.parameters() if p.requires_grad]
        step = classifier_step(network, "crt")
        return {"parameters": params, "step": step, "start": head.reset_rows}
