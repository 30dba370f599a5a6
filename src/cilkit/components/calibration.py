"""Per-task affine corrections of scores, ``alpha * s + beta``, one (alpha, beta) pair per task:
the one home of BiC's bias correction and the prototype method's bias layer.

Each pair starts at the identity (alpha 1, beta 0) and is trained by a learner's stage after
its task; the module grows by one pair per task and regrows them from a checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _PairPerTask(nn.Module):
    """``alphas[t]`` and ``betas[t]``: task ``t``'s pair, of ``size`` values each."""

    def __init__(self) -> None:
        super().__init__()
        self.alphas = nn.ParameterList()
        self.betas = nn.ParameterList()

    def _add(self, size: int, device: torch.device | None) -> None:
        if device is None and len(self.alphas):
            device = self.alphas[0].device
        self.alphas.append(nn.Parameter(torch.ones(size, device=device)))
        self.betas.append(nn.Parameter(torch.zeros(size, device=device)))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args) -> None:
        while (alpha := state_dict.get(f"{prefix}alphas.{len(self.alphas)}")) is not None:
            self._add(len(alpha), None)
        super()._load_from_state_dict(state_dict, prefix, *args)


class TaskBias(_PairPerTask):
    """One scalar pair per task on that task's logits (BiC, Wu et al., CVPR 2019)."""

    def add_task(self) -> None:
        self._add(1, None)

    def forward(self, logits: torch.Tensor, slices: list[slice]) -> torch.Tensor:
        """``logits`` with task ``i``'s columns ``slices[i]`` corrected by pair ``i``; columns
        after the last slice are left as they are."""
        parts = [logits[:, rows] * self.alphas[i] + self.betas[i] for i, rows in enumerate(slices)]
        rest = logits[:, slices[-1].stop :] if slices else logits
        return torch.cat([*parts, rest], dim=1) if parts else logits


class ClassBias(_PairPerTask):
    """One pair of vectors per task, a value per class (the prototype method's "re-measure")."""

    def add_task(self, num_classes: int, device: torch.device | None = None) -> None:
        self._add(num_classes, device)

    def forward(self, scores: torch.Tensor, train_last: bool = False) -> torch.Tensor:
        """The corrected scores; only the last task's pair carries gradients, if asked."""
        n = len(self.alphas)
        keep = [train_last and i == n - 1 for i in range(n)]
        alpha = torch.cat([a if k else a.detach() for a, k in zip(self.alphas, keep, strict=True)])
        beta = torch.cat([b if k else b.detach() for b, k in zip(self.betas, keep, strict=True)])
        return scores * alpha + beta
