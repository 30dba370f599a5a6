"""DualPrompt: a general prompt shared by all tasks in the first blocks and one expert prompt per
task in later ones, both as key and value prefixes; the expert is chosen by key matching."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cilkit.backbones.vit_tokens import TokenEdits
from cilkit.components.prompts import (
    TaskParameters,
    cosine_to_keys,
    prompted_blocks,
    pull_term,
    select_keys,
)
from cilkit.config.schema import FieldError, LearnerConfig
from cilkit.contract import TaskContext
from cilkit.errors import ConfigError
from cilkit.learners.base import register_learner
from cilkit.learners.prompt_base import PromptLearner, refuse_rebalancing

AUTHORS_G_LAYERS = (0, 1)
AUTHORS_E_LAYERS = (2, 3, 4)


@dataclass(frozen=True)
class DualPromptConfig(LearnerConfig):
    name: str = "dualprompt"
    g_layers: tuple[int, ...] | None = None
    """Blocks with the general prompt (``g_prompt_layer_idx``); None: the authors' 0-1."""
    g_length: int = 5
    """Prefix tokens of the general prompt per block (``g_prompt_length``)."""
    e_layers: tuple[int, ...] | None = None
    """Blocks with the expert prompt (``e_prompt_layer_idx``); None: the authors' 2-4."""
    e_length: int = 5
    """Prefix tokens of an expert prompt per block (``length``: 5 for CIFAR-100, 20 for
    ImageNet-R in the authors' configs)."""
    pool_size: int = 10
    """The most tasks (expert prompts) a run may have (``size``)."""
    pull_coeff: float = 1.0
    """Weight of the key-matching term subtracted from the loss (``pull_constraint_coeff``)."""
    batchwise: bool = True
    """At prediction, the expert most often chosen by the batch's images serves the whole
    batch (``batchwise_prompt``, on in the authors' configs); false: each image its own."""
    init_from_previous: bool = True
    """A new task's expert prompt starts as a copy of the previous task's (the code's
    ``shared_prompt_pool``, on in the authors' configs); its key starts uniform either way."""

    def __post_init__(self) -> None:
        for field in ("g_length", "e_length", "pool_size"):
            if getattr(self, field) < 1:
                raise FieldError(field, "must be >= 1")
        if self.pull_coeff < 0:
            raise FieldError("pull_coeff", "must be >= 0")
        refuse_rebalancing(self)


class DualPrompts(nn.Module):
    """The general prompt ``(g_layers, 2, g_length, dim)`` (index 0 of the second dimension:
    key prefixes, 1: value prefixes), trained in every task; per task, an expert prompt
    ``(e_layers, 2, e_length, dim)`` and its key ``(dim,)``, the older ones frozen
    (:class:`~cilkit.components.prompts.TaskParameters`)."""

    def __init__(self, g_layers: int, g_length: int, e_layers: int, e_length: int, dim: int):
        super().__init__()
        self.general = nn.Parameter(torch.empty(g_layers, 2, g_length, dim).uniform_(-1, 1))
        self.experts = TaskParameters(1, e_layers, 2, e_length, dim)
        self.keys = TaskParameters(1, dim)

    def add_task(self, generator: torch.Generator, copy_previous: bool) -> None:
        """The next task's expert prompt (uniform in [-1, 1], or the previous task's) and key."""
        dim = self.keys.shape[1]
        if copy_previous and len(self.experts):
            expert = self.experts.tasks[-1].detach().cpu()
        else:
            expert = torch.rand(self.experts.shape, generator=generator) * 2 - 1
        self.experts.add(expert)
        self.keys.add(torch.rand(1, dim, generator=generator) * 2 - 1)

    def trainable(self) -> list[nn.Parameter]:
        return [self.general, *self.experts.trainable(), *self.keys.trainable()]


@register_learner("dualprompt")
class DualPrompt(PromptLearner):
    """DualPrompt (Wang et al., ECCV 2022) on a frozen pre-trained ViT.

    Wang, Zhang, Ebrahimi, Sun, Zhang, Lee, Ren, Su, Perot, Dy, Pfister, "DualPrompt:
    Complementary Prompting for Rehearsal-free Continual Learning", ECCV 2022; as the authors'
    code (google-research/l2p, JAX, ``dualprompt`` configs) and its PyTorch port
    (JH-LEE-KR/dualprompt-pytorch ``prompt.py``, ``attention.py``, ``engine.py``, configs):

    - query ``q``: the frozen ViT's class token after the final norm;
    - G-prompt: prefix tuning of blocks 0-1, ``g_length`` key and ``g_length`` value prefixes a
      block, shared by all tasks and trained in each;
    - E-prompt: one expert per task on blocks 2-4, with a key; in training the task's own
      expert (``use_prompt_mask``), at prediction the expert whose key is most cosine-similar
      to ``q`` (top 1; batch-wise by frequency by default);
    - the head classifies the prompted class token after the final norm (``head_type='token'``);
    - loss: cross-entropy over the task's classes (``train_mask``) minus ``pull_coeff`` times
      ``cos(q, the task's key)`` averaged over the batch;
    - a new task's expert starts as a copy of the previous one (``shared_prompt_pool``).

    Where the port differs and cilkit does not follow it:

    - the port reshapes the selected prefixes ``(layers, 2, B, ...)`` to ``(layers, B, 2, ...)``
      without a transpose, so half of a batch gets key prefixes for both keys and values and
      the other half value prefixes for both; cilkit gives every image its own key and value
      prefixes, as the JAX code does;
    - the port matches the query against all ``size`` keys, the untrained ones of later tasks
      included (uniform noise); cilkit matches the keys of the tasks seen so far, the paper's
      expert set; old experts and keys are frozen by declaration (the port keeps them still by
      training only the masked slot with a fresh Adam each task and weight decay 0).

    The authors' schedule: Adam (lr 0.03 scaled by batch / 256: 0.0028 at batch 24; weight
    decay 0), constant learning rate, gradient-norm clipping 1.0, 5 epochs a task on CIFAR-100
    (50 on ImageNet-R, expert length 20), ViT-B/16 ``augreg_in21k`` weights, inputs in [0, 1].
    LAMDA-PILOT's ``dualprompt`` (``backbone/prompt.py``, 5240714) is the port, reshape
    included; its ``exps/dualprompt.json`` trains at lr 0.001 with ``pull_constraint_coeff``
    0.1 (the port: 0.0028 and 1.0).
    """

    config_cls = DualPromptConfig
    cfg: DualPromptConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        c, depth = self.cfg, self.vit.depth
        self.g_layers = prompted_blocks("g_layers", c.g_layers, AUTHORS_G_LAYERS, depth)
        self.e_layers = prompted_blocks("e_layers", c.e_layers, AUTHORS_E_LAYERS, depth)
        if not self.e_layers:
            raise ConfigError(
                f"learner.e_layers: this {depth}-block ViT has none of the authors' expert "
                f"blocks {list(AUTHORS_E_LAYERS)}; name the blocks (e.g. learner.e_layers=[{depth - 1}])"
            )
        if both := sorted(set(self.g_layers) & set(self.e_layers)):
            raise ConfigError(f"learner.g_layers and learner.e_layers: both name blocks {both}")
        self.prompts = DualPrompts(
            len(self.g_layers), c.g_length, len(self.e_layers), c.e_length, self.vit.dim
        )

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        if ctx.info.num_tasks > self.cfg.pool_size:
            raise ConfigError(
                f"learner.pool_size: {ctx.info.num_tasks} tasks need {ctx.info.num_tasks} "
                f"expert prompts; the pool holds {self.cfg.pool_size}"
            )
        while len(self.prompts.keys) <= ctx.info.task_id:
            self.prompts.add_task(ctx.generator, self.cfg.init_from_previous)

    def choose(self, query: torch.Tensor, train: bool) -> torch.Tensor:
        """The expert of each image ``(B, 1)``: the current task's in training, else by keys."""
        if train:  # the newest expert is the task's (also after a mid-task resume)
            task = len(self.prompts.keys) - 1
            return torch.full((len(query), 1), task, device=query.device)
        similarity = cosine_to_keys(query, self.prompts.keys.stacked())
        return select_keys(similarity, 1, self.cfg.batchwise)

    def prompted(self, x, query, train):
        p = self.prompts
        chosen = self.choose(query, train)
        experts = p.experts.stacked()[chosen[:, 0]]  # (B, e_layers, 2, length, dim)
        prefixes = {
            b: (p.general[j, 0][None], p.general[j, 1][None]) for j, b in enumerate(self.g_layers)
        }
        for j, b in enumerate(self.e_layers):
            prefixes[b] = (experts[:, j, 0], experts[:, j, 1])
        features = self.vit(x, TokenEdits(prefixes=prefixes))
        if not train:
            return features, {}
        keys = p.keys.stacked()
        return features, {"pull": -self.cfg.pull_coeff * pull_term(query, keys, chosen)}
