"""EASE: one adapter per task on a frozen pre-trained ViT, prototypes in every task's subspace,
the old classes' prototypes in new subspaces completed from their semantic similarity."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.backbones import CosineLinear
from cilkit.backbones.peft import ParallelAdapters, PEFTBranches, PEFTOptions, attach_peft
from cilkit.config.schema import FieldError, LearnerConfig
from cilkit.contract import Batch, Parameters, StepOutput, TaskContext
from cilkit.learners.base import Learner, register_learner


@dataclass(frozen=True)
class EASEConfig(PEFTOptions, LearnerConfig):
    """EASE's options; of :class:`PEFTOptions` only the adapter's (the code's VTAB script sets
    ``adapter_bottleneck`` 16)."""

    name: str = "ease"
    alpha: float = 0.1
    """Weight of a class's cosines in the other tasks' subspaces, divided by the number of
    tasks so far minus one (the code's ``alpha / cur_task``); its own subspace weighs 1."""
    reweight: bool = True
    """Score by the subspace-weighted sum (the code's ``use_reweight``); false: one cosine
    between the concatenated feature and the concatenated prototype."""
    recalc_similarity: bool = True
    """Complete every old class in every later subspace anew at each task from all classes
    that have real prototypes there (the code's default ``recalc_sim``); false: only in the
    newest subspace, from the new classes, once (the paper's Eq. 8, ``solve_similarity``)."""
    pretrained_subspace: bool = False
    """Put the pre-trained model's features first as one more subspace (``use_init_ptm``);
    every class has a real prototype there."""
    pretrained_weight: float = 0.0
    """Weight of the pre-trained subspace's cosine at inference (``beta``)."""

    def __post_init__(self) -> None:
        self.check_peft()
        if self.peft != "adapter":
            raise FieldError("peft", "ease expands by adapters: only 'adapter'")
        if self.rebalance is not None:
            raise FieldError("rebalance", "ease classifies by prototypes: no rebalancing")


@torch.no_grad()
def complete_prototypes(
    prototypes: torch.Tensor, class_task: torch.Tensor, offset: int, recalc: bool
) -> torch.Tensor:
    """EASE's semantic-guided prototype completion (the code's ``solve_sim_reset`` with
    ``recalc``, ``solve_similarity`` without).

    Class ``c`` of task ``t`` has real prototypes in the subspaces of tasks ``<= t`` (subspace
    ``task + offset``; an ``offset`` of 1 leaves subspace 0 to the pre-trained model). In the
    subspace of each later task ``s`` its prototype becomes ``sum_j softmax_j(cos(P[c, t],
    P[j, t])) P[j, s]`` over the classes ``j`` of tasks ``>= s`` (``recalc``: all of them,
    recomputed at every task) or of the newest task only (once, when ``s`` is the newest):
    cosine similarity in ``c``'s own subspace, softmax without temperature, as the code.

    Args:
        prototypes: ``(C, S, d)``; entries without a real prototype are overwritten.
        class_task: ``(C,)`` the task of each class.
        offset: subspaces before the first task's.
        recalc: complete every later subspace from every class with a real prototype there.
    """
    out = prototypes.clone()
    last = int(class_task.max())
    for t in range(last):
        old, own = class_task == t, t + offset
        for s in range(t + 1, last + 1) if recalc else (last,):
            donors = class_task >= s if recalc else class_task == last
            sim = F.normalize(out[old, own], dim=1) @ F.normalize(out[donors, own], dim=1).T
            out[old, s + offset] = sim.softmax(dim=1) @ out[donors, s + offset]
    return out


@register_learner("ease")
class EASE(Learner):
    """EASE (Zhou et al., CVPR 2024): an expandable subspace ensemble on a frozen ViT.

    Zhou, Sun, Ye, Zhan, "Expandable Subspace Ensemble for Pre-Trained Model-Based
    Class-Incremental Learning", CVPR 2024; as the authors' code (sun-hailong/CVPR24-Ease
    ``models/ease.py``, ``backbone/vit_ease.py``, ``backbone/linears.py``):

    - each task adds a fresh AdaptFormer adapter set (:class:`ParallelAdapters`, identity at
      the start, not a copy of the previous one); it and a cosine head over the task's new
      classes alone (the code's ``proxy_fc``, learned scale from 1) train with cross-entropy on
      the new classes; the ViT and the earlier adapters are frozen. The code's recipe: SGD,
      momentum 0.9, lr 0.025, weight decay 5e-4, cosine to 0, 20 epochs, batch 48;
    - after it, the new classes' prototypes are their mean features in every subspace (one
      pass of the ViT per adapter, un-augmented images), and the old classes' prototypes in
      the new subspaces are completed (:func:`complete_prototypes`);
    - score of class ``c`` of task ``i``: ``sum_j w_j cos(f_j(x), P[c, j])`` with ``w_i = 1``
      and ``w_j = alpha / T`` for the other subspaces (``T`` tasks after the first), and
      ``pretrained_weight`` for the pre-trained subspace when there is one (``forward_reweight``).

    Where the code departs from the paper, the code is followed: the completion is recomputed
    at every task from every class with a real prototype in the subspace (``recalc_sim``; the
    paper's Eq. 8 uses the new classes once: ``recalc_similarity: false``), and the
    pre-trained features are off by default (``use_init_ptm``; its OmniBenchmark script turns
    them on with ``moni_adam``, which imitates APER and is left out: use ``aper``). Also left out:
    ``use_old_data`` (exemplars) and ``use_diagonal`` (an ablation). LAMDA-PILOT's ``ease`` is
    the same code (``EaseCosineLinear``). The code's ``forward_reweight`` hard-codes 768-wide
    subspaces; here they are the ViT's width.
    """

    config_cls = EASEConfig
    cfg: EASEConfig
    needs_memory = False
    uses_memory = False

    def __init__(self, cfg, network, memory_cfg, build_backbone=None) -> None:
        super().__init__(cfg, network, memory_cfg, build_backbone)
        vit = network.backbone
        attach_peft(vit, "adapter", "learner 'ease'", **cfg.peft_options())
        network.backbone = PEFTBranches(vit, cfg.pretrained_subspace)
        self.dim = int(vit.out_dim)
        self.task_head = CosineLinear(self.dim)
        self.register_buffer("prototypes", torch.zeros(0, 0, self.dim, dtype=torch.float64))
        self.register_buffer("class_task", torch.zeros(0, dtype=torch.long))

    @property
    def ensemble(self) -> PEFTBranches:
        """The ViT with one adapter set per task; ``forward`` concatenates the subspaces."""
        return self.network.backbone

    @property
    def adapters(self) -> ParallelAdapters:
        return self.ensemble.peft

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        while len(self.adapters.sets) <= ctx.info.task_id:
            self.adapters.add_set()
        self.task_head = CosineLinear(self.dim).to(self.prototypes.device)
        self.task_head.expand(ctx.info.num_new_classes)

    def configure_training(self, ctx: TaskContext) -> Parameters:
        """The newest adapter set and the task's head; the ViT and older sets stay frozen."""
        self.ensemble.vit.model.requires_grad_(False)
        for old in self.adapters.sets[:-1]:
            old.requires_grad_(False)
        current = self.adapters.sets[-1].requires_grad_(True)
        return [*current.parameters(), *self.task_head.parameters()]

    def training_step(self, batch: Batch) -> StepOutput:
        features = self.ensemble.branch(batch.x, -1)
        new = self.task_head(features)
        logits = self.new_classes_only(F.pad(new, (self.num_old_classes, 0)))
        loss = self.classification_loss(logits, batch.y, features)
        return StepOutput(loss, {"ce": loss.detach()}, logits)

    @torch.no_grad()
    def after_task(self, ctx: TaskContext) -> None:
        super().after_task(ctx)
        self.adapters.sets[-1].requires_grad_(False)
        idx = ctx.new_indices()
        features = self.features_fn(ctx)(idx).double()
        labels = ctx.train.targets[idx.to(ctx.train.device)].to(features.device)
        new, S = ctx.info.num_new_classes, self.ensemble.num_branches
        sums = features.new_zeros(new, features.shape[1]).index_add_(
            0, labels - self.num_old_classes, features
        )
        counts = torch.bincount(labels - self.num_old_classes, minlength=new).clamp_min(1)
        means = (sums / counts[:, None]).view(new, S, self.dim).to(self.prototypes)
        old = F.pad(self.prototypes, (0, 0, 0, S - self.prototypes.shape[1]))
        task = torch.full((new,), ctx.info.task_id, dtype=torch.long)
        self.class_task = torch.cat([self.class_task, task.to(self.class_task.device)])
        offset = int(self.ensemble.pretrained)
        self.prototypes = complete_prototypes(
            torch.cat([old, means]), self.class_task, offset, self.cfg.recalc_similarity
        )

    def evaluation_extractor(self) -> list[nn.Module]:
        """Each subspace's branch on its own, so the engine's test-feature cache runs only the
        new task's adapter over the old tasks' images (the ensemble grows by one per task)."""
        return self.ensemble.branch_modules()

    @torch.no_grad()
    def predict_features(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(features.device.type, enabled=False):
            return {"cnn": self.scores(features.float())}

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Subspace-weighted cosines ``(B, C)`` of fp32 ``features`` to the prototypes."""
        protos = self.prototypes.to(features)
        if not self.cfg.reweight:
            flat = F.normalize(protos.flatten(1), dim=1)
            return F.normalize(features, dim=1) @ flat.T
        C, S, _ = protos.shape
        x = F.normalize(features.view(len(features), S, self.dim), dim=2)
        cos = torch.einsum("bsd,csd->bcs", x, F.normalize(protos, dim=2))
        return (cos * self.subspace_weights().to(cos)).sum(dim=2)

    def subspace_weights(self) -> torch.Tensor:
        """``(C, S)``: 1 in a class's own subspace, ``alpha / T`` in the other tasks' (``T``
        tasks after the first), ``pretrained_weight`` in the pre-trained one."""
        offset, S = int(self.ensemble.pretrained), self.prototypes.shape[1]
        others = self.cfg.alpha / max(S - offset - 1, 1)
        weights = torch.full((len(self.class_task), S), others, dtype=torch.float64)
        own = self.class_task.cpu() + offset
        weights[torch.arange(len(own)), own] = 1.0
        if offset:
            weights[:, 0] = self.cfg.pretrained_weight
        return weights

    def _freeze_finished_sets(self) -> None:
        """Every adapter set whose task has prototypes is frozen (all but a training one)."""
        done = self.prototypes.shape[1] - int(self.ensemble.pretrained)
        for i, adapters in enumerate(self.adapters.sets):
            if i < done:
                adapters.requires_grad_(False)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._freeze_finished_sets()
        return result
