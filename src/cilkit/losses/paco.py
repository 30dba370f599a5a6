"""Parametric contrastive loss (PaCo): the one home of ``paco_loss``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def paco_loss(
    features: torch.Tensor,
    targets: torch.Tensor,
    num_anchors: int,
    sup_logits: torch.Tensor,
    alpha: float,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 0.05,
    log_prior: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cui et al.'s PaCo loss (ICCV 2021, Eq. 6; the authors' ``PaCoLoss``).

    The first ``num_anchors`` rows of ``features`` (the queries) are the anchors. Each anchor's
    softmax runs over the class centres (``sup_logits``, the linear classifier's logits, plus
    ``log_prior`` when given: the authors' logit adjustment) and over every other row of
    ``features`` (queries, keys, queue) at ``temperature``, the latter weighted by ``gamma`` in
    the denominator. The positives are the anchor's own centre with weight ``beta`` and the
    rows of the same class with weight ``alpha``; the loss is the weighted mean of their
    log-probabilities, negated and averaged over the anchors.

    Args:
        features: L2-normalised embeddings ``(N, D)``, anchors first.
        targets: class ids ``(N,)``; rows of ``valid`` False (empty queue slots) never count.
        num_anchors: how many leading rows are anchors.
        sup_logits: the anchors' classifier logits ``(num_anchors, C)``: the centres' term.
        alpha: weight of the same-class samples among the positives.
        beta: weight of the anchor's class centre among the positives.
        gamma: weight of the samples in the softmax's denominator.
        temperature: temperature of the sample-to-sample similarities.
        log_prior: ``(C,)`` added to ``sup_logits`` (log of the training class frequencies).
        valid: ``(N,)`` rows that take part; None = all.
    """
    n = features.shape[0]
    anchors = features[:num_anchors]
    labels = targets[:num_anchors]
    sim = anchors.float() @ features.float().T / temperature  # (A, N)
    sup = sup_logits.float()
    if log_prior is not None:
        sup = sup + log_prior.to(sup)
    logits = torch.cat([sup, sim], dim=1)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = torch.ones(num_anchors, n, device=features.device)
    not_self[torch.arange(num_anchors), torch.arange(num_anchors)] = 0.0
    if valid is not None:
        not_self = not_self * valid.to(not_self)[None, :]
    same = (labels[:, None] == targets[None, :]).float() * not_self
    centre = F.one_hot(labels, sup.shape[1]).float()
    positives = torch.cat([beta * centre, alpha * same], dim=1)
    weights = torch.cat([torch.ones_like(centre), gamma * not_self], dim=1)
    log_prob = logits - torch.log((logits.exp() * weights).sum(1, keepdim=True) + 1e-12)
    return -((positives * log_prob).sum(1) / positives.sum(1)).mean()
