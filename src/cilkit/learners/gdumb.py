"""GDumb: a greedy class-balanced memory and a model trained from scratch on it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cilkit.backbones.blocks import init_weights
from cilkit.config.schema import LearnerConfig, OptimConfig
from cilkit.contract import StageTime, TaskContext, TrainingStage
from cilkit.learners.base import Learner, register_learner


@dataclass(frozen=True)
class GDumbConfig(LearnerConfig):
    name: str = "gdumb"
    epochs: int = 256
    """Epochs of the training from scratch on the memory after each task (the paper: 256)."""
    lr: float = 0.05
    weight_decay: float = 1e-6


@register_learner("gdumb")
class GDumb(Learner):
    """GDumb (Prabhu et al., ECCV 2020): a model trained from scratch on a balanced memory.

    No training on the stream; after each task a network is trained from scratch on the
    class-balanced memory alone.

    The memory is filled greedily and class-balanced (``memory.selection: class_balanced``, a
    random equal share of every seen class, which is what GDumb's greedy sampler converges to
    when tasks arrive whole). After ``after_task`` updates it, a stage re-initialises every
    parameter and batch-norm statistic and trains the whole network on the memory's samples
    (SGD, lr 0.05, cosine; the paper restarts the cosine (SGDR), clips gradients at 10 and adds
    cutmix, which are left out). Differs from ``finetune`` by training only on the memory and
    from scratch: the sanity baseline of the paper.
    """

    config_cls = GDumbConfig
    cfg: GDumbConfig
    needs_memory = True
    memory_selection = "class_balanced"

    def train_indices(self, ctx: TaskContext) -> torch.Tensor:
        """Nothing is trained on the stream."""
        return torch.zeros(0, dtype=torch.long)

    def stages(self, ctx: TaskContext, when: StageTime) -> list[TrainingStage]:
        stages = super().stages(ctx, when)
        if when == "after_task":
            stages.insert(0, self._from_scratch(ctx))
        return stages

    def _from_scratch(self, ctx: TaskContext) -> TrainingStage:
        network, memory = self.network, self.memory.indices()

        def before_epoch(epoch: int) -> None:
            self.before_training(ctx, memory)  # the loss's class counts: the memory's
            self.before_epoch(epoch, self.cfg.epochs)

        def start() -> None:
            for module in network.modules():
                if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                    module.reset_running_stats()
            init_weights(network.backbone)
            network.head.reset_rows()

        def finish() -> None:
            self.update_class_means(ctx)  # of the retrained network

        return TrainingStage(
            name="training from scratch on the memory",
            parameters=[p for p in network.parameters() if p.requires_grad],
            epochs=self.cfg.epochs,
            optim=OptimConfig(
                lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, scheduler="cosine"
            ),
            step=self.training_step,
            indices=memory,
            before_epoch=before_epoch,
            start=start,
            finish=finish,
        )
