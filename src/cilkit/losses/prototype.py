"""Distances to class prototypes and the prototype distance distillation terms (the seed's
prototype LT-CIL method, ``cilkit.learners.proto_ltcil``).

Every function keeps fixed shapes and masks rows instead of selecting them, so nothing in a
training step waits for the device.
"""

from __future__ import annotations

import torch


def squared_distances(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``(n, c)`` squared Euclidean distances of ``(n, d)`` features to ``(c, d)`` prototypes."""
    return (x.float()[:, None] - prototypes.float()[None]).pow(2).sum(-1)


def _all(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(len(x), dtype=torch.bool, device=x.device)


def pull_loss(
    recomputed: torch.Tensor, stored: torch.Tensor, present: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared distance of each old prototype recomputed now to its stored position, over
    the rows ``present`` marks (all when None); zero when none is."""
    present = _all(recomputed) if present is None else present
    d = torch.where(present, (recomputed - stored).pow(2).sum(1), 0.0)
    return d.sum() / present.sum().clamp_min(1)


def push_loss(
    new: torch.Tensor,
    old: torch.Tensor,
    temperature: float,
    new_present: torch.Tensor | None = None,
    old_present: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean_new sum_old 1 / sqrt(1 + d^2 / T)`` over the marked rows (all when None; zero
    when none): grows, up to 1 a pair, as a new prototype nears an old one (the seed's
    ``rsqrt(d^2 / T)`` made bounded at d = 0)."""
    new_present = _all(new) if new_present is None else new_present
    old_present = _all(old) if old_present is None else old_present
    r = torch.rsqrt(1 + squared_distances(new, old) / temperature)
    r = torch.where(new_present[:, None] & old_present[None], r, 0.0)
    return r.sum() / new_present.sum().clamp_min(1)
