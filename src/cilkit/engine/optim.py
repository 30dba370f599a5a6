"""Optimiser and learning-rate schedule of one task, from the config."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cilkit.config.schema import OptimConfig

ParamGroup = dict[str, Any]
"""``{"params": [...], "lr_scale": 0.1, "weight_decay_scale": 0.0}``: parameters whose learning
rate and weight decay are the optimiser config's times these factors (default 1)."""


def param_groups(
    params: Sequence[nn.Parameter | ParamGroup],
    cfg: OptimConfig,
    task_id: int,
    lr_multiplier: float = 1.0,
) -> list[dict[str, Any]]:
    """torch parameter groups with the task's learning rate and weight decay applied.

    ``params`` holds parameters (the config's values) and :data:`ParamGroup` dicts (scaled
    values); parameters given bare form one group. Every learning rate is multiplied by
    ``lr_multiplier`` (the batch-size rule, ``train.lr_scaling``).
    """
    lr, weight_decay, _ = cfg.for_task(task_id)
    lr *= lr_multiplier
    bare = [p for p in params if isinstance(p, nn.Parameter)]
    groups = [{"params": bare}] if bare else []
    groups += [dict(g) for g in params if not isinstance(g, nn.Parameter)]
    out = []
    for g in groups:
        unknown = set(g) - {"params", "lr_scale", "weight_decay_scale"}
        if unknown:
            raise ValueError(f"unknown parameter group keys {sorted(unknown)}")
        out.append(
            {
                "params": list(g["params"]),
                "lr": lr * g.get("lr_scale", 1.0),
                "weight_decay": weight_decay * g.get("weight_decay_scale", 1.0),
            }
        )
    return out


def build_optimizer(
    params: Sequence[nn.Parameter | ParamGroup],
    cfg: OptimConfig,
    task_id: int,
    lr_multiplier: float = 1.0,
) -> torch.optim.Optimizer:
    """The task's optimiser (first-task ``init_*`` values apply to task 0).

    Args:
        params: parameters, and :data:`ParamGroup` dicts for parameters whose learning rate or
            weight decay differ by a factor.
        cfg: optimiser config.
        task_id: the task (0 uses the ``init_*`` values).
        lr_multiplier: factor on every learning rate (``TrainConfig.lr_multiplier``).
    """
    groups = param_groups(params, cfg, task_id, lr_multiplier)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.AdamW(groups)


def lr_factor(cfg: OptimConfig, task_id: int, epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate during ``epoch`` (0-based) of a task."""
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    if cfg.scheduler == "multistep":
        _, _, milestones = cfg.for_task(task_id)
        return cfg.gamma ** sum(1 for m in milestones if epoch >= m)
    if cfg.scheduler == "cosine":
        span = max(epochs - cfg.warmup_epochs, 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, task_id: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch schedule (warm-up, then multistep, cosine or constant)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: lr_factor(cfg, task_id, epoch, epochs)
    )
