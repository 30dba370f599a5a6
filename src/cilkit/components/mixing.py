"""Sample mixing on the device-side batch: mixup (Zhang et al., "mixup: Beyond Empirical Risk
Minimization", ICLR 2018), the one home for every method that mixes images (MiSLAS's stage 1,
...). Draws only from the generator it is handed, so a resumed run mixes the same pairs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mix each sample with a randomly paired one of the same batch.

    ``lam ~ Beta(alpha, alpha)`` is drawn once per batch and the batch is paired with a random
    permutation of itself: ``lam * x + (1 - lam) * x[perm]``, with targets ``y`` (weight ``lam``)
    and ``y[perm]`` (weight ``1 - lam``), as in the mixup paper and MiSLAS's ``mixup_data``.

    Args:
        x: the batch of inputs.
        y: their labels.
        alpha: Beta concentration, > 0 (1 = lam uniform on [0, 1]).
        generator: the generator to draw ``lam`` and the pairing from (on any device).

    Returns:
        The mixed inputs, ``y``, ``y[perm]`` and ``lam``.
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    # torch's Beta sampler takes no generator: seed a numpy one from the torch generator.
    # the engine's augmentation generator lives on the training device: draw there
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=generator, device=device).to(x.device)
    mixed = lam * x + (1.0 - lam) * x[perm]
    return mixed, y, y[perm.to(y.device)], lam


def mixed_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """The loss of mixed inputs: ``lam * loss(logits, y_a) + (1 - lam) * loss(logits, y_b)``."""
    return lam * loss_fn(logits, y_a) + (1.0 - lam) * loss_fn(logits, y_b)
