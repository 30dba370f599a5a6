"""MEMO: memory-efficient expandable model (shared generalised blocks, one specialised block per
task)."""

from __future__ import annotations

from dataclasses import dataclass

from cilkit.backbones.network import BranchedNet, split_backbone
from cilkit.config.schema import FieldError
from cilkit.contract import TaskContext
from cilkit.errors import ConfigError
from cilkit.learners.base import register_learner
from cilkit.learners.der import DER, DERConfig


@dataclass(frozen=True)
class MEMOConfig(DERConfig):
    name: str = "memo"
    shared_stages: int = -1
    """Backbone stages in the shared generalised blocks (with the stem); negative counts from
    the end: -1 = every stage but the last (ResNet-32: stem + stages 1-2, as the paper)."""
    train_base: bool = False
    """Keep training the generalised blocks after the first task (the authors' ``train_base``;
    their CIFAR-100 json sets it true, the paper describes them frozen)."""

    def __post_init__(self) -> None:
        if self.shared_stages == 0:
            raise FieldError("shared_stages", "must not be 0 (0 shared stages is DER)")


@register_learner("memo")
class MEMO(DER):
    """MEMO (Zhou et al., ICLR 2023): DER's expansion applied to the deep layers only.

    Zhou, Wang, Ye & Zhan, "A Model or 603 Exemplars: Towards Memory-Efficient
    Class-Incremental Learning". The backbone is cut into generalised (shallow) blocks, shared by
    every task and frozen after the first (``train_base`` keeps them training), and specialised
    (deep) blocks: each task after the first adds a copy of the newest specialised block, the
    earlier ones frozen and in eval mode, over the shared blocks' maps; the head sees their
    concatenated features. Everything else is DER's, as in the authors' code (PyCIL's
    ``memo.py``, ``AdaptiveNet``): the auxiliary head over the new classes plus one "old" class
    with weight ``aux_weight`` (their ``alpha_aux`` = 1) and weight aligning after each task.
    For ResNet-32 the cut is after stage 2 (PyCIL's ``memo_resnet32``), for ResNet-18 after
    stage 3. Differs from DER by the shared trunk: one new stage per task instead of a whole
    extractor.
    """

    config_cls = MEMOConfig
    cfg: MEMOConfig

    @staticmethod
    def branched_network(cfg, network, build_backbone) -> BranchedNet:
        stages = len(network.backbone.stages)
        at = stages + cfg.shared_stages if cfg.shared_stages < 0 else cfg.shared_stages
        if not 0 < at < stages:
            raise ConfigError(
                f"learner.shared_stages: {cfg.shared_stages} leaves no stage to share or none to "
                f"specialise in a backbone of {stages} stages: use 1 to {stages - 1} or "
                f"-1 to -{stages - 1}"
            )
        trunk, first = split_backbone(network.backbone, at)
        return BranchedNet(
            first, network.head, lambda: split_backbone(build_backbone(), at)[1], trunk
        )

    def before_task(self, ctx: TaskContext) -> None:
        if ctx.info.num_old_classes and not self.cfg.train_base:
            self.network.freeze_trunk()
        super().before_task(ctx)
