"""L2P: a pool of prompts with learnable keys; the prompts whose keys are nearest to the frozen
model's query are prepended to the tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from cilkit.backbones.vit_tokens import TokenEdits
from cilkit.components.prompts import cosine_to_keys, pull_term, select_keys
from cilkit.config.schema import FieldError, LearnerConfig
from cilkit.contract import TaskContext
from cilkit.learners.base import register_learner
from cilkit.learners.prompt_base import PromptLearner, refuse_rebalancing


@dataclass(frozen=True)
class L2PConfig(LearnerConfig):
    name: str = "l2p"
    pool_size: int = 10
    """Prompts in the pool (the authors' ``size``), shared by all tasks."""
    prompt_length: int = 5
    """Tokens per prompt (``length``)."""
    top_k: int = 5
    """Prompts chosen per image (``top_k``): ``top_k * prompt_length`` tokens are prepended."""
    pull_coeff: float = 0.1
    """Weight of the key-matching term subtracted from the loss (``pull_constraint_coeff``)."""
    batchwise: bool = True
    """Choose, for the whole batch, the ``top_k`` prompts most often among the images' own
    choices, in training and at prediction (``batchwise_prompt``, on in the authors' configs).
    A prediction then depends on the other images of its batch; false: each image its own."""
    diversity: bool = False
    """The paper's optional diversified selection in training (Sec. 3.3): the key distance
    ``1 - cos`` is multiplied by each prompt's normalised selection frequency over the earlier
    tasks, so rarely used prompts are preferred for a new task."""
    head_input: Literal["prompt", "token"] = "prompt"
    """What the head classifies: the mean of the prompts' output tokens (``head_type='prompt'``,
    the authors') or the class token (``'token'``)."""

    def __post_init__(self) -> None:
        for field in ("pool_size", "prompt_length", "top_k"):
            if getattr(self, field) < 1:
                raise FieldError(field, "must be >= 1")
        if self.top_k > self.pool_size:
            raise FieldError(
                "top_k", f"{self.top_k} prompts cannot be chosen from {self.pool_size}"
            )
        if self.pull_coeff < 0:
            raise FieldError("pull_coeff", "must be >= 0")
        refuse_rebalancing(self)


class PromptPool(nn.Module):
    """``pool`` prompts ``(length, dim)`` and their keys ``(dim,)``, uniform in [-1, 1] as the
    authors' ``initializer`` and ``prompt_key_init``; the selection counts of the current and
    of the earlier tasks (for the diversified selection) are buffers, so they resume."""

    def __init__(self, pool: int, length: int, dim: int) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(pool, length, dim).uniform_(-1, 1))
        self.keys = nn.Parameter(torch.empty(pool, dim).uniform_(-1, 1))
        self.register_buffer("task_counts", torch.zeros(pool))
        self.register_buffer("earlier_counts", torch.zeros(pool))


@register_learner("l2p")
class L2P(PromptLearner):
    """Learning to Prompt (Wang et al., CVPR 2022) on a frozen pre-trained ViT.

    Wang, Zhang, Lee, Zhang, Sun, Ren, Su, Perot, Dy, Pfister, "Learning to Prompt for
    Continual Learning", CVPR 2022; as the authors' code (google-research/l2p, JAX) and its
    PyTorch port (JH-LEE-KR/l2p-pytorch ``prompt.py``, ``vision_transformer.py``,
    ``engine.py``, ``configs/cifar100_l2p.py``):

    - query ``q``: the frozen ViT's class token after the final norm (``embedding_key='cls'``,
      ``pre_logits`` of the un-prompted model);
    - the ``top_k`` prompts whose keys are most cosine-similar to ``q`` (batch-wise by
      frequency by default, :func:`~cilkit.components.prompts.select_keys`) are prepended to
      the patch tokens after the class token, ``[cls, prompts, patches]``, each prompt token
      with the class token's position embedding (the port's ``pos_embed`` for the prompt slots);
    - the head classifies the mean of the prompts' output tokens after the final norm
      (``head_type='prompt'``);
    - loss: cross-entropy over the task's classes (``train_mask``: the other logits at minus
      infinity) minus ``pull_coeff`` times ``sum cos(q, chosen keys) / B``;
    - the whole pool and its keys train in every task (no task owns a prompt); the ViT is
      frozen.

    The authors' schedule: Adam (lr 0.03 scaled by batch / 256, so 0.0028 at batch 24; weight
    decay 0), constant learning rate, gradient-norm clipping 1.0, 5 epochs a task, a new
    optimiser per task, inputs in [0, 1] (mean 0, std 1), ViT-B/16 whose "ImageNet" weights are
    ``augreg_in21k`` (21k pre-trained; the port's timm 0.6.7 ``vit_base_patch16_224`` is
    ``augreg_in21k_ft_in1k``): name the tag in the config. LAMDA-PILOT's ``l2p``
    (``backbone/prompt.py``, ``exps/l2p.json``, 5240714) is the port with the same settings.
    """

    config_cls = L2PConfig
    cfg: L2PConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        c = self.cfg
        self.prompts = PromptPool(c.pool_size, c.prompt_length, self.vit.dim)
        model = self.vit.model
        self.cls_position = model.cls_token is not None and not model.no_embed_class

    def after_task(self, ctx: TaskContext) -> None:
        super().after_task(ctx)
        self.prompts.earlier_counts += self.prompts.task_counts
        self.prompts.task_counts.zero_()

    def choose(self, query: torch.Tensor, train: bool) -> torch.Tensor:
        """Indices ``(B, top_k)`` of the prompts each image uses."""
        c, pool = self.cfg, self.prompts
        similarity = cosine_to_keys(query, pool.keys)
        if train and c.diversity and pool.earlier_counts.sum() > 0:
            frequency = pool.earlier_counts / pool.earlier_counts.sum()
            similarity = -(1 - similarity) * frequency  # the largest: the smallest distance x h
        return select_keys(similarity.detach(), c.top_k, c.batchwise)

    def prompted(self, x, query, train):
        pool = self.prompts
        chosen = self.choose(query, train)
        prompts = pool.prompts[chosen].flatten(1, 2)  # (B, top_k * length, dim)
        if self.cls_position:  # the class token's position embedding, on each prompt token
            prompts = prompts + self.vit.model.pos_embed[:, :1].to(prompts.dtype)
        tokens = self.vit.tokens(x, TokenEdits(prompts={0: prompts}))
        if self.cfg.head_input == "prompt":
            features = tokens.prompt_tokens.mean(dim=1)
        else:
            features = self.vit.pooled(tokens)
        if not train:
            return features, {}
        pool.task_counts += torch.bincount(chosen.flatten(), minlength=len(pool.keys))
        return features, {"pull": -self.cfg.pull_coeff * pull_term(query, pool.keys, chosen)}
