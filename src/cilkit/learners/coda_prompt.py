"""CODA-Prompt: prompts assembled from a pool of components by the query's attention to their
keys, as key and value prefixes of the first blocks; each task adds components, the older ones
frozen."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.backbones.vit_tokens import TokenEdits
from cilkit.components.prompts import (
    TaskParameters,
    gram_schmidt_rows,
    ortho_penalty,
    prompted_blocks,
)
from cilkit.config.schema import FieldError, LearnerConfig
from cilkit.contract import TaskContext
from cilkit.errors import ConfigError
from cilkit.learners.base import register_learner
from cilkit.learners.prompt_base import PromptLearner, refuse_rebalancing

AUTHORS_LAYERS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class CODAPromptConfig(LearnerConfig):
    name: str = "coda_prompt"
    pool_size: int | None = None
    """Prompt components in all (the code's ``prompt_param[0]``); each task adds
    ``pool_size // num_tasks`` of them. None: the authors' 100, or the ViT's width when it is
    smaller (the keys of all components are orthogonal, so there can be at most that many)."""
    prompt_length: int = 8
    """Tokens per prompt (``prompt_param[1]``): the first half are key prefixes, the rest value
    prefixes."""
    ortho_mu: float = 0.0
    """Weight of the orthogonality penalty on keys, attention vectors and components
    (``prompt_param[2]``; 0 in every script of the authors)."""
    layers: tuple[int, ...] | None = None
    """Blocks that get prefixes; None: the authors' blocks 0-4, those the model has."""

    def __post_init__(self) -> None:
        if self.pool_size is not None and self.pool_size < 1:
            raise FieldError("pool_size", "must be >= 1")
        if self.prompt_length < 2 or self.prompt_length % 2:
            raise FieldError("prompt_length", "must be even and >= 2 (key and value halves)")
        if self.ortho_mu < 0:
            raise FieldError("ortho_mu", "must be >= 0")
        refuse_rebalancing(self)


class CODAComponents(nn.Module):
    """Per task, for each prompted block: ``n`` keys ``K`` and attention vectors ``A``
    ``(n, dim)`` and components ``P`` ``(n, length, dim)``, stored task by task
    (:class:`~cilkit.components.prompts.TaskParameters`, the older ones frozen)."""

    def __init__(self, layers: int, length: int, dim: int, per_task: int) -> None:
        super().__init__()
        self.per_task = per_task
        self.keys = TaskParameters(per_task, layers, dim)
        self.attention = TaskParameters(per_task, layers, dim)
        self.components = TaskParameters(per_task, layers, length, dim)

    def add_task(self, generator: torch.Generator) -> None:
        """The next task's rows, each orthonormal to every earlier row of its block (the code's
        ``gram_schmidt`` in ``process_task_count``)."""
        for params in (self.keys, self.attention, self.components):
            old = params.stacked() if len(params) else None
            rows = []
            for layer in range(params.shape[1]):
                earlier = (
                    old[:, layer].reshape(old.shape[0], -1)
                    if old is not None
                    else torch.zeros(0, math.prod(params.shape[2:]))
                )
                rows.append(gram_schmidt_rows(earlier, self.per_task, generator))
            params.add(torch.stack(rows, dim=1))

    def trainable(self) -> list[nn.Parameter]:
        return [*self.keys.trainable(), *self.attention.trainable(), *self.components.trainable()]


@register_learner("coda_prompt")
class CODAPrompt(PromptLearner):
    """CODA-Prompt (Smith et al., CVPR 2023) on a frozen pre-trained ViT.

    Smith, Karlinsky, Gutta, Cascante-Bonilla, Kim, Arbelle, Panda, Feris, Kira, "CODA-Prompt:
    COntinual Decomposed Attention-based Prompting for Rehearsal-Free Continual Learning",
    CVPR 2023; as the authors' code (GT-RIPL/CODA-Prompt@6417d4f ``models/zoo.py``
    ``CodaPrompt``, ``models/vit.py``, ``learners/prompt.py``):

    - query ``q``: the frozen ViT's class token after the final norm, without prompts;
    - per prompted block (0-4 of ViT-B's 12): the prompt is ``sum_m alpha_m P_m`` with
      ``alpha_m = cos(q * A_m, K_m)`` (an elementwise product, then the cosine; no softmax, so
      a weight may be negative) over every component so far; its first ``length / 2`` tokens
      are key prefixes, the rest value prefixes (prefix tuning,
      :mod:`cilkit.backbones.vit_tokens`);
    - a task adds ``pool_size // num_tasks`` components, keys and attention vectors, drawn
      orthonormal to every earlier row of their block by Gram-Schmidt; the older ones are
      frozen. The code freezes them by ``detach`` and keeps them still only because Adam is
      reset each task with weight decay 0; here they are frozen by declaration, so any
      optimiser leaves them unchanged;
    - loss: cross-entropy over the task's classes only (the other logits at minus infinity),
      plus ``ortho_mu`` times ``mean((T T^T - I)^2)`` of the keys, attention vectors and
      flattened components of each prompted block (old rows included, only the new ones
      receiving gradient); ``ortho_mu`` is 0 in all the authors' scripts;
    - the class token after the final norm, prompted, goes to the linear head.

    The authors' schedule is Adam (lr 1e-3, weight decay 0), batch 128, 20 epochs on CIFAR-100
    and 50 on ImageNet-R, with ``lr * cos(99 pi e / (200 (E - 1)))`` per epoch (it ends near
    1.6 % of lr); cilkit's ``cosine`` schedule goes to 0 instead. The paper-era code
    (``22948d2``) initialised the whole pool with ``orthogonal_`` and scaled the penalty by
    1e-6. LAMDA-PILOT's ``coda_prompt`` is the authors' code (accuracy weighted by samples);
    Mammoth multiplies the penalty by a second factor ``mu`` (both default 0).
    """

    config_cls = CODAPromptConfig
    cfg: CODAPromptConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.layers = prompted_blocks("layers", self.cfg.layers, AUTHORS_LAYERS, self.vit.depth)
        dim = self.vit.dim
        self.pool_size = self.cfg.pool_size if self.cfg.pool_size is not None else min(100, dim)
        if self.pool_size > dim:
            raise ConfigError(
                f"learner.pool_size: {self.pool_size} components need {self.pool_size} orthogonal "
                f"keys, but this ViT's keys have {dim} dimensions; set learner.pool_size <= {dim}"
            )
        self.prompts: CODAComponents | None = None  # sized at the first task (num_tasks)

    def _components(self, per_task: int) -> CODAComponents:
        if self.prompts is None:
            self.prompts = CODAComponents(
                len(self.layers), self.cfg.prompt_length, self.vit.dim, per_task
            ).to(self.class_means.device)
        return self.prompts

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        per_task = self.pool_size // ctx.info.num_tasks
        if per_task < 1:
            raise ConfigError(
                f"learner.pool_size: {self.pool_size} components cannot be shared by "
                f"{ctx.info.num_tasks} tasks; set it to at least {ctx.info.num_tasks}"
            )
        components = self._components(per_task)
        while len(components.keys) <= ctx.info.task_id:
            components.add_task(ctx.generator)

    def prompted(self, x, query, train):
        c = self.prompts
        keys, attention, components = (
            c.keys.stacked(),
            c.attention.stacked(),
            c.components.stacked(),
        )
        half = self.cfg.prompt_length // 2
        prefixes, penalty = {}, x.new_zeros(())
        for j, block in enumerate(self.layers):
            k, a, p = keys[:, j], attention[:, j], components[:, j]
            attended = F.normalize(query[:, None, :] * a[None], dim=2)
            weights = (attended * F.normalize(k, dim=1)[None]).sum(dim=2)
            prompt = torch.einsum("bk,kld->bld", weights, p)
            prefixes[block] = (prompt[:, :half], prompt[:, half:])
            if train and self.cfg.ortho_mu > 0:
                penalty = penalty + ortho_penalty(k) + ortho_penalty(a) + ortho_penalty(p)
        features = self.vit(x, TokenEdits(prefixes=prefixes))
        terms = {"ortho": self.cfg.ortho_mu * penalty} if train and self.cfg.ortho_mu > 0 else {}
        return features, terms

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.prompts is None and any(k.startswith("prompts.") for k in state_dict):
            self._components(int(state_dict["prompts.keys.tasks.0"].shape[0]))
        return super().load_state_dict(state_dict, strict, assign)
