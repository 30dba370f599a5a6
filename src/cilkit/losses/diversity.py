"""RIDE's distribution-aware diversity loss (Wang, Lian, Miao, Liu & Yu, "Long-tailed
Recognition by Routing Diverse Distribution-Aware Experts", ICLR 2021).

Each expert's temperature-scaled distribution is compared with that of the experts' mean
logits, ``T^2 KL(softmax(mean / T) || softmax(expert / T))``; RIDE weights the sum over experts
by a negative factor, so minimising the loss pushes the experts apart (diverse experts). It is
"distribution-aware" because, once deferred re-weighting starts, the temperature ``T`` is one
per class and follows the class prior (the authors' ``RIDELoss``), which RIDE computes and
passes in here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diversity_kl(
    expert_logits: torch.Tensor, mean_logits: torch.Tensor, temperature: torch.Tensor | float
) -> torch.Tensor:
    """``mean(T)^2 * KL(softmax(mean / T) || softmax(expert / T))``, averaged over the batch.

    Args:
        expert_logits: ``(B, C)`` one expert's logits.
        mean_logits: ``(B, C)`` the experts' mean logits, a fixed target (detached here).
        temperature: a number, or ``(C,)`` one per class (RIDE's distribution-aware ``T``).

    Returns:
        A scalar, zero when the expert's scaled distribution equals the mean's.
    """
    t = torch.as_tensor(temperature, dtype=torch.float32, device=expert_logits.device)
    log_q = F.log_softmax(expert_logits.float() / t, dim=1)
    p = F.softmax(mean_logits.detach().float() / t, dim=1)
    return t.mean() ** 2 * F.kl_div(log_q, p, reduction="batchmean")
