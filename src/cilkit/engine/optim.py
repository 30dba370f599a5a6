"""Optimiser and learning-rate schedule of one task, from the config."""

from __future__ import annotations

import math

import torch
from torch import nn

from cilkit.config.schema import OptimConfig


def build_optimizer(
    params: list[nn.Parameter], cfg: OptimConfig, task_id: int
) -> torch.optim.Optimizer:
    """The task's optimiser (first-task ``init_*`` values apply to task 0)."""
    lr, weight_decay, _ = cfg.for_task(task_id)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=cfg.momentum, weight_decay=weight_decay, nesterov=cfg.nesterov
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


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
