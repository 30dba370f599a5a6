"""The common part of the methods that prompt a frozen pre-trained ViT (L2P, DualPrompt,
CODA-Prompt): not a method of its own, so not registered."""

from __future__ import annotations

import torch
from torch import nn

from cilkit.backbones import Frozen
from cilkit.backbones.peft import vision_transformer
from cilkit.backbones.vit_tokens import TokenViT
from cilkit.config.schema import FieldError
from cilkit.contract import Batch, Parameters, StepOutput, TaskContext
from cilkit.learners.base import Learner


def refuse_rebalancing(cfg) -> None:
    """A prompt method's config check: its classifier is trained with the prompts."""
    if cfg.rebalance is not None:
        raise FieldError(
            "rebalance", f"{cfg.name} trains its head with the prompts: no rebalancing"
        )


class PromptLearner(Learner):
    """A frozen pre-trained ViT queried once per image and run again with prompts chosen by that
    query, through :class:`~cilkit.backbones.vit_tokens.TokenViT`; trainable: the method's
    prompt module (``self.prompts``) and the class head.

    - The ViT is wrapped in :class:`Frozen` from the start (no gradient to its weights, eval
      mode whatever the engine calls); gradients reach the prompts through it.
    - The query is the frozen model's own pooled feature (its class token after the final norm,
      the authors' ``cls_features`` / ``pre_logits``), under ``torch.no_grad``; at evaluation
      the engine serves it from the test-feature cache (:meth:`query_extractor`), since the
      model it comes from never changes.
    - Training loss: the classification loss over the task's new classes (the authors'
      ``train_mask``: logits of the other classes at minus infinity), plus the method's own
      terms (:meth:`prompted` returns them).

    Subclasses build ``self.prompts`` in ``__init__`` and implement :meth:`prompted`.
    """

    uses_memory = False
    prompts: nn.Module

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        who = f"learner '{self.cfg.name}'"
        model = vision_transformer(self.network.backbone, who)
        self.__dict__["seam"] = TokenViT(model, who)  # a view of the frozen ViT, not state
        self.network.backbone = Frozen(self.network.backbone)

    @property
    def vit(self) -> TokenViT:
        """The token seam over the frozen ViT."""
        return self.__dict__["seam"]

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen pre-trained model's pooled feature of ``x`` (no prompt)."""
        return self.network.backbone(x)

    def query_extractor(self) -> nn.Module:
        return self.network.backbone

    def prompted(
        self, x: torch.Tensor, query: torch.Tensor, train: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The prompted pass: the features the head classifies and the method's loss terms
        (summed into the loss when ``train``)."""
        raise NotImplementedError

    def configure_training(self, ctx: TaskContext) -> Parameters:
        """The prompt module's trainable parameters and the head."""
        return [
            *(p for p in self.prompts.parameters() if p.requires_grad),
            *self.network.head.parameters(),
        ]

    def training_step(self, batch: Batch) -> StepOutput:
        features, terms = self.prompted(batch.x, self.query(batch.x), train=True)
        logits = self.head_logits(features)
        ce = self.classification_loss(self.new_classes_only(logits), batch.y, features)
        loss = ce + sum(terms.values()) if terms else ce
        named = {"ce": ce.detach(), **{k: v.detach() for k, v in terms.items()}}
        return StepOutput(loss, named, logits)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.predict_queried(x, self.query(x))

    @torch.no_grad()
    def predict_queried(self, x: torch.Tensor, query: torch.Tensor) -> dict[str, torch.Tensor]:
        features, _ = self.prompted(x, query.to(x.dtype), train=False)
        return {"cnn": self.head_logits(features)}
