"""Exemplar selection strategies (``cilkit list buffers``) and nearest-mean classification.

Everything here is a pure function of tensors. The registry :data:`SELECTORS` holds one
:class:`Selector` per strategy; its flags tell the memory how to call it:

* ``per_class=True``: ``fn(features_or_count, m, generator) -> LongTensor`` picks ``min(m, n)``
  positions among the ``n`` candidates of one class, in pick order. ``features_or_count`` is the
  ``(n, d)`` feature matrix when ``needs_features`` is true, else the features or just ``n``.
* ``per_class=False`` (reservoir): ``fn(current, num_seen, new_indices, capacity, generator)``
  updates one class-agnostic buffer from a stream; see :func:`reservoir_update`.

Positions and indices are returned as int64 tensors on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cilkit.registry import Registry


@dataclass(frozen=True)
class Selector:
    """A registered selection strategy: the function plus how the memory must call it.

    Attributes:
        fn: the strategy (see the module docstring for the two call signatures).
        per_class: True when ``fn`` picks exemplars within one class, False for a stream buffer.
        needs_features: True when ``fn`` needs the candidates' features (memory extracts them).
    """

    fn: Callable[..., Any]
    per_class: bool
    needs_features: bool

    def __post_init__(self) -> None:
        # The registry describes an entry by its docstring: this instance's is the function's.
        object.__setattr__(self, "__doc__", self.fn.__doc__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


SELECTORS: Registry[Selector] = Registry("buffer")
register_selector = SELECTORS.register


def _selector(
    name: str, *, per_class: bool, needs_features: bool
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as a :class:`Selector` and return the function unchanged."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        register_selector(name)(Selector(fn, per_class=per_class, needs_features=needs_features))
        return fn

    return decorator


def _count(features_or_count: torch.Tensor | int | None) -> int:
    if features_or_count is None:
        raise ValueError("the number of candidates is needed: pass the features or a count")
    if isinstance(features_or_count, torch.Tensor):
        return int(features_or_count.shape[0])
    return int(features_or_count)


@_selector("herding", per_class=True, needs_features=True)
def herding(
    features: torch.Tensor, m: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Herding (iCaRL): greedily match the mean of the L2-normalised features.

    Step ``k = 1..m`` picks, among the candidates not picked yet, the ``x`` minimising
    ``|| mu - (sum_{j<k} phi(p_j) + phi(x)) / k ||`` where ``phi`` is the L2-normalised feature and
    ``mu`` the mean of ``phi`` over all candidates (iCaRL, Algorithm 4). Ties go to the lowest
    position. Every step is one vectorised distance computation over all candidates, in float64.

    Args:
        features: ``(n, d)`` features of one class's candidates.
        m: number of exemplars wanted.
        generator: unused (herding is deterministic); accepted for a uniform signature.

    Returns:
        ``(min(m, n),)`` int64 positions in pick order; a prefix of length ``m' < m`` is the
        herding selection of ``m'`` exemplars.
    """
    del generator
    if features.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {tuple(features.shape)}")
    n = features.shape[0]
    m = max(0, min(int(m), n))
    phi = F.normalize(features.detach().to(torch.float64), dim=1)
    mu = phi.mean(dim=0)
    running = torch.zeros_like(mu)
    picked = torch.zeros(n, dtype=torch.bool, device=phi.device)
    order = torch.empty(m, dtype=torch.long, device=phi.device)
    for k in range(1, m + 1):
        dist = torch.linalg.vector_norm(mu - (running + phi) / k, dim=1)
        dist.masked_fill_(picked, float("inf"))
        best = torch.argmin(dist)  # first minimum: lowest position on ties
        order[k - 1] = best
        picked[best] = True
        running += phi[best]
    return order.cpu()


@_selector("random", per_class=True, needs_features=False)
def random(
    features: torch.Tensor | int | None, m: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random: a uniformly random subset of each class, in random order.

    Args:
        features: the ``(n, ...)`` candidates' features, or just their number ``n``.
        m: number of exemplars wanted.
        generator: CPU generator seeding the draw (the global generator when None).

    Returns:
        ``(min(m, n),)`` distinct int64 positions in random order (a prefix is a random subset).
    """
    n = _count(features)
    m = max(0, min(int(m), n))
    return torch.randperm(n, generator=generator)[:m]


@_selector("class_balanced", per_class=True, needs_features=False)
def class_balanced(
    features: torch.Tensor | int | None, m: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Class-balanced random: equally many random exemplars of every class.

    The same draw as :func:`random` (the memory gives every class the same budget and calls
    this per class); registered under its own name for configs that ask for it explicitly.

    Args:
        features: the ``(n, ...)`` candidates' features, or just their number ``n``.
        m: number of exemplars wanted.
        generator: CPU generator seeding the draw.

    Returns:
        ``(min(m, n),)`` distinct int64 positions in random order.
    """
    return random(features, m, generator)


@_selector("reservoir", per_class=False, needs_features=False)
def reservoir_update(
    current: torch.Tensor,
    num_seen: int,
    new_indices: torch.Tensor,
    capacity: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """Reservoir: a uniform sample of the whole stream, regardless of class (Vitter's algorithm R).

    The ``i``-th stream item (0-based over the whole stream) is appended while ``i < capacity``;
    afterwards ``j`` is drawn uniformly from ``{0, ..., i}`` and the item replaces slot ``j`` when
    ``j < capacity``. Every item seen so far is thus kept with probability
    ``capacity / num_seen``. The draws for a whole batch of items are made at once.

    Args:
        current: ``(min(num_seen, capacity),)`` stored dataset indices.
        num_seen: number of stream items seen before ``new_indices``.
        new_indices: ``(t,)`` dataset indices of the next stream items, in stream order.
        capacity: maximum buffer size.
        generator: CPU generator seeding the draws.

    Returns:
        The new buffer ``(min(num_seen + t, capacity),)`` and the new ``num_seen + t``.
    """
    if capacity < 0 or num_seen < 0:
        raise ValueError("capacity and num_seen must be >= 0")
    current = current.detach().to("cpu", torch.long).reshape(-1)
    new = new_indices.detach().to("cpu", torch.long).reshape(-1)
    if current.numel() != min(num_seen, capacity):
        raise ValueError(
            f"buffer holds {current.numel()} items, expected min(num_seen, capacity) = "
            f"{min(num_seen, capacity)}"
        )
    t = new.numel()
    fills = num_seen + torch.arange(t) < capacity
    buffer = torch.cat([current, new[fills]])  # appended in stream order while there is room
    slots = reservoir_slots(num_seen, t, capacity, generator)
    buffer[slots[slots >= 0]] = new[slots >= 0]
    return buffer, num_seen + t


def reservoir_slots(
    num_seen: int, count: int, capacity: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Where the next ``count`` stream items go in a reservoir of ``capacity`` that has seen
    ``num_seen`` items (Vitter's algorithm R, drawn for the whole batch at once).

    Returns:
        ``(count,)`` int64 slots, -1 for items not kept. While the reservoir fills, item ``i``
        takes slot ``i``; afterwards slot ``j`` is drawn uniformly from ``{0, ..., i}`` and kept
        when ``j < capacity``. When several items of the batch draw one slot, only the last in
        stream order keeps it (the others get -1), as writing them in order would leave it.
    """
    stream_pos = num_seen + torch.arange(count, dtype=torch.long)
    slots = torch.where(stream_pos < capacity, stream_pos, torch.full_like(stream_pos, -1))
    late = stream_pos >= capacity
    if late.any():
        pos = stream_pos[late]
        device = generator.device if generator is not None else None  # the training device's
        u = torch.rand(pos.numel(), generator=generator, dtype=torch.float64, device=device)
        u = u.cpu()
        drawn = torch.minimum((u * (pos + 1).to(torch.float64)).long(), pos)
        drawn[drawn >= capacity] = -1
        slots[late] = drawn
    hit = slots >= 0
    if hit.any():
        order = torch.arange(count)
        last = torch.full((max(capacity, 1),), -1, dtype=torch.long)
        last.scatter_reduce_(0, slots[hit], order[hit], reduce="amax")
        slots[hit & (last[slots.clamp(min=0)] != order)] = -1
    return slots


def class_means(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    flipped_features: torch.Tensor | None = None,
    *,
    normalise: bool = True,
) -> torch.Tensor:
    """L2-normalised mean of the L2-normalised features of each class (iCaRL's exemplar means),
    or with ``normalise=False`` the plain mean of the raw features (prototypical networks).

    Args:
        features: ``(n, d)`` features.
        labels: ``(n,)`` int64 class ids in ``[0, num_classes)``.
        num_classes: number of rows of the result.
        flipped_features: optional ``(n, d)`` features of the horizontally flipped images; the
            mean is then over both sets (as iCaRL's nearest-mean-of-exemplars does).
        normalise: L2-normalise the features and the means (iCaRL); False averages the raw
            features and leaves the means as they are.

    Returns:
        ``(num_classes, d)`` class means (float32 or wider), unit-norm when ``normalise``; zero
        rows for classes without samples.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError("features must be (n, d) and labels (n,)")
    dtype = torch.promote_types(features.dtype, torch.float32)
    norm = F.normalize if normalise else (lambda t, dim: t)
    phi = norm(features.detach().to(dtype), dim=1)
    labels = labels.to(phi.device, torch.long)
    if flipped_features is not None:
        if flipped_features.shape != features.shape:
            raise ValueError("flipped_features must have the shape of features")
        flipped = norm(flipped_features.detach().to(phi.device, dtype), dim=1)
        phi = torch.cat([phi, flipped])
        labels = torch.cat([labels, labels])
    sums = phi.new_zeros(num_classes, phi.shape[1]).index_add_(0, labels, phi)
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes].clamp_min(1)
    return norm(sums / counts.unsqueeze(1).to(dtype), dim=1)


def nme_logits(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Nearest-mean scores: minus the Euclidean distance of normalised features to each mean.

    Args:
        features: ``(B, d)`` features (L2-normalised here).
        means: ``(C, d)`` class means, e.g. from :func:`class_means`.

    Returns:
        ``(B, C)`` scores, higher = closer; ``argmax`` is the nearest-mean prediction.
    """
    phi = F.normalize(features.to(means.dtype), dim=1)
    return -torch.cdist(phi, means)
