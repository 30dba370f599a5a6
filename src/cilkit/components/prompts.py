"""The shared parts of the prompt methods (L2P, DualPrompt, CODA-Prompt): parameters that grow by
one block per task and freeze the older ones, key matching, the orthogonal initialisation and
penalty, and the choice of blocks a method prompts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.errors import ConfigError


class TaskParameters(nn.Module):
    """One parameter tensor per task, all of one shape; only the newest trains.

    Freezing is declared (``requires_grad`` off for every older tensor), not left to a zero
    gradient, so weight decay or momentum in the run's optimiser cannot move an old task's
    values. A checkpoint with more tasks than the module has grows it when loaded (zeros, on
    the module's device, then overwritten by the stored values).

    Args:
        shape: the shape of each task's tensor.
    """

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.tasks = nn.ParameterList()
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # the device

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, value: torch.Tensor | None = None) -> nn.Parameter:
        """Append a task's tensor (zeros unless ``value``), freezing every older one."""
        for p in self.tasks:
            p.requires_grad_(False)
        init = torch.zeros(self.shape) if value is None else value.detach().reshape(self.shape)
        p = nn.Parameter(init.to(self._anchor.device, torch.float32).clone())
        self.tasks.append(p)
        return p

    def stacked(self) -> torch.Tensor:
        """Every task's tensor, concatenated along the first dimension."""
        return torch.cat(list(self.tasks), dim=0)

    def trainable(self) -> list[nn.Parameter]:
        """The newest task's tensor (the only one that trains)."""
        return [self.tasks[-1]] if len(self.tasks) else []

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        stored = {
            k[len(prefix) :].split(".")[1] for k in state_dict if k.startswith(prefix + "tasks.")
        }
        while len(self.tasks) < len(stored):
            self.add()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def gram_schmidt_rows(
    old: torch.Tensor, count: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``count`` new unit rows, drawn from a standard normal and made orthogonal to the rows of
    ``old`` and to each other by classical Gram-Schmidt (CODA-Prompt's ``gram_schmidt``: every
    earlier row, the old tasks' trained ones included, is projected out; a draw that nearly
    vanishes is drawn again). ``old``: ``(n, d)``; returns ``(count, d)`` on ``old``'s device.

    Rows of ``old`` that are no longer orthogonal to each other (trained rows) leave the new
    rows only approximately orthogonal to their span, as in the authors' code.

    Raises:
        ValueError: more rows than dimensions (they cannot all be orthogonal).
    """
    d = old.shape[1]
    if old.shape[0] + count > d:
        raise ValueError(f"{old.shape[0]} + {count} orthogonal rows do not fit in {d} dimensions")
    basis = [row for row in old.detach().double().cpu()]
    out = []
    while len(out) < count:
        v = torch.randn(d, generator=generator, dtype=torch.float64)
        for u in basis:
            v = v - (v @ u) / (u @ u) * u
        if v @ v < 1e-8:
            continue
        basis.append(v)
        out.append(v / v.norm())
    return torch.stack(out).to(old.device, old.dtype) if out else old.new_zeros(0, d)


def ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """CODA-Prompt's orthogonality penalty ``mean((t t^T - I)^2)`` of the rows of ``t``
    (flattened to ``(n, -1)``)."""
    t = t.reshape(t.shape[0], -1)
    return ((t @ t.T - torch.eye(t.shape[0], device=t.device, dtype=t.dtype)) ** 2).mean()


def cosine_to_keys(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each query ``(B, d)`` to each key ``(M, d)``: ``(B, M)``, both sides
    L2-normalised as L2's and DualPrompt's ``l2_normalize`` (epsilon 1e-12)."""
    return F.normalize(query, dim=1, eps=1e-12) @ F.normalize(keys, dim=1, eps=1e-12).T


def prompted_blocks(
    field: str, chosen: Sequence[int] | None, default: Sequence[int], depth: int
) -> tuple[int, ...]:
    """The blocks a method prompts: ``chosen`` as given (each must exist), or, when None, the
    authors' ``default`` blocks that a ``depth``-block model has (a small test ViT has fewer
    than ViT-B's 12).

    Raises:
        ConfigError: a chosen block the model does not have (``learner.<field>``).
    """
    if chosen is None:
        return tuple(i for i in default if i < depth)
    for i in chosen:
        if not 0 <= i < depth:
            raise ConfigError(
                f"learner.{field}: block {i} does not exist in this {depth}-block ViT"
            )
    return tuple(chosen)


def select_keys(similarity: torch.Tensor, top_k: int, batchwise: bool) -> torch.Tensor:
    """Indices ``(B, top_k)`` of the keys each sample uses, from its ``(B, M)`` similarity to the
    ``M`` keys: its own ``top_k`` most similar keys, or with ``batchwise`` the ``top_k`` keys
    that are most often among the samples' own choices, for the whole batch (the authors'
    ``batchwise_prompt``, L2P's prompt selection "by frequency" in a batch; its ties go to the
    lower key index here, where ``torch.topk`` leaves them unspecified).
    """
    own = similarity.topk(top_k, dim=1).indices
    if not batchwise:
        return own
    counts = torch.bincount(own.flatten(), minlength=similarity.shape[1])
    order = torch.sort(counts, descending=True, stable=True).indices
    return order[:top_k].expand(similarity.shape[0], -1)


def pull_term(query: torch.Tensor, keys: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The key-matching term ``sum_b sum_j cos(q_b, k_{chosen[b, j]}) / B`` (the authors'
    ``reduce_sim``), which a method subtracts from its loss to pull the chosen keys towards
    their queries."""
    q = F.normalize(query, dim=1, eps=1e-12)
    k = F.normalize(keys, dim=1, eps=1e-12)[chosen]  # (B, top_k, d)
    return (k * q[:, None]).sum() / query.shape[0]
