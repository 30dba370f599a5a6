"""APER (ADAM): a PEFT module adapted on the first task, then cosine prototypes of the
pre-trained and the adapted model's features side by side."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cilkit.backbones import Frozen, unfrozen
from cilkit.backbones.peft import PEFTBranches, PEFTOptions, attach_peft
from cilkit.components.analytic import ClassStatistics
from cilkit.contract import Parameters, TaskContext
from cilkit.learners.base import register_learner
from cilkit.learners.simplecil import SimpleCIL, SimpleCILConfig


@dataclass(frozen=True)
class APERConfig(PEFTOptions, SimpleCILConfig):
    name: str = "aper"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_peft()


@register_learner("aper")
class APER(SimpleCIL):
    """APER/ADAM (Zhou et al., IJCV 2024): SimpleCIL on a pre-trained and a once-adapted ViT.

    Zhou, Cai, Ye, Zhan, Liu, "Revisiting Class-Incremental Learning with Pre-Trained Models:
    Generalizability and Adaptivity are All You Need", IJCV 2024; as the authors' code
    (zhoudw-zdw/RevisitingCIL ``models/aper_adapter.py``, ``aper_ssf.py``, ``aper_vpt.py``):

    - first task: the PEFT module ``peft`` (:mod:`cilkit.backbones.peft`) and a cosine head
      over the adapted features (the code's ``CosineLinear``, learned scale from 1) train with
      cross-entropy in the engine's loop, the ViT's own weights frozen, both at the run's
      learning rate (the code: SGD, momentum 0.9, lr 0.01, weight decay 5e-4, cosine to 0,
      20 epochs, batch 48; its VPT-deep CIFAR script 5 epochs, lr 0.05, batch 16);
    - after it, the head is dropped and the pre-trained and the adapted model are frozen
      together (:class:`~cilkit.backbones.peft.PEFTBranches`); every task's prototypes, the
      first one's included (the code's ``replace_fc`` runs after
      ``construct_dual_branch_network``), are the class means of the concatenated
      ``[pre-trained, adapted]`` features of the un-augmented training images;
    - scores: cosine similarity to the prototypes (scale 1); no training after the first task.

    The paper describes one model with the PEFT module "merged" beside the pre-trained one; the
    code runs two ViTs (the SSF and VPT branches load the pre-trained model afresh), here one
    ViT run twice, with the module off and on, which computes the same. LAMDA-PILOT's
    ``aper_*`` are the same code; its configs differ (ViT-B/16 IN-1k weights, ``init_cls`` 10,
    VPT-deep 20 epochs at lr 0.01). The ResNet variants (``aper_bn``, SSF on a ResNet) and
    ``aper_finetune`` are not implemented: ``aper`` needs a timm ViT.
    """

    config_cls = APERConfig
    cfg: APERConfig
    head = "cosine"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        vit = self.network.backbone
        attach_peft(vit, self.cfg.peft, "learner 'aper'", **self.cfg.peft_options())
        self.prototypes = ClassStatistics(2 * int(vit.out_dim))  # [pre-trained, adapted]

    def trains_first_task(self) -> bool:
        return True

    @property
    def vit(self) -> nn.Module:
        """The timm ViT backbone carrying the PEFT module (``vit.peft``)."""
        backbone = unfrozen(self.network.backbone)
        return backbone.vit if isinstance(backbone, PEFTBranches) else backbone

    def freeze_backbone(self) -> None:
        """Freeze ``[pre-trained, adapted]`` together (idempotent): the code's
        ``MultiBranchCosineIncrementalNet``, ``convnets[0]`` pre-trained, ``convnets[1]`` tuned."""
        if not self.backbone_frozen:
            self.network.backbone = Frozen(PEFTBranches(self.network.backbone, pretrained=True))

    def configure_training(self, ctx: TaskContext) -> Parameters:
        """The PEFT module and the head; the ViT's own weights never train."""
        self.vit.model.requires_grad_(False)
        return [*self.vit.peft.parameters(), *self.network.head.parameters()]

    def after_task(self, ctx: TaskContext) -> None:
        self.freeze_backbone()  # before the prototypes: the first task's are the merged model's
        super().after_task(ctx)
