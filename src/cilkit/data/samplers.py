"""Epoch samplers: the order (and, for resampling, the multiset) of training samples per epoch.

A sampler maps the remapped labels of the samples a task trains on to positions into them for
one epoch; the on-device data path then gathers, augments and (under torchrun) shards batches
of those positions as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cilkit.config.schema import FieldError, SamplerConfig
from cilkit.registry import Registry


class Sampler:
    """Instance-balanced sampling: every sample once per epoch, in random order.

    Args:
        cfg: this sampler's config.
    """

    config_cls: type[SamplerConfig] = SamplerConfig

    def __init__(self, cfg: SamplerConfig) -> None:
        self.cfg = cfg

    def __call__(self, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Positions into ``targets`` (CPU int64) for one epoch."""
        return torch.randperm(len(targets), generator=generator)


SAMPLERS: Registry[type[Sampler]] = Registry("sampler")


register_sampler = SAMPLERS.register_class


register_sampler("instance")(Sampler)


def create_sampler(cfg: SamplerConfig) -> Sampler:
    """Build the sampler named ``cfg.name``."""
    return SAMPLERS.create(cfg)


# ---------------------------------------------------------------------------------------------
# Class-rebalancing samplers
# ---------------------------------------------------------------------------------------------


def _class_index(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class index 0..K-1 of each sample, samples per class) for arbitrary integer labels."""
    _, inverse, counts = torch.unique(targets.cpu(), return_inverse=True, return_counts=True)
    return inverse, counts


def _resample(
    targets: torch.Tensor,
    class_mass: torch.Tensor,
    inverse: torch.Tensor,
    counts: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Draw ``len(targets)`` positions with replacement so class ``c`` has probability
    proportional to ``class_mass[c]``, uniformly within the class."""
    per_sample = (class_mass.double() / counts.double())[inverse]
    return torch.multinomial(per_sample, len(targets), replacement=True, generator=generator)


@register_sampler("class_balanced")
class ClassBalancedSampler(Sampler):
    """Class-balanced resampling: each class equally likely (p_i proportional to 1/n_y).

    ``len(targets)`` positions are drawn with replacement; a sample of class ``y`` has probability
    ``1 / (K n_y)`` for ``K`` classes, so every class is drawn about ``len / K`` times (Kang et
    al., ICLR 2020, "Decoupling representation and classifier", class-balanced sampling).
    """

    def __call__(self, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if len(targets) == 0:
            return torch.zeros(0, dtype=torch.long)
        inverse, counts = _class_index(targets)
        return _resample(targets, torch.ones(len(counts)), inverse, counts, generator)


@register_sampler("sqrt")
class SquareRootSampler(Sampler):
    """Square-root resampling: class frequency proportional to sqrt(n_c), with replacement.

    Class ``c`` is drawn with probability ``sqrt(n_c) / sum_k sqrt(n_k)``, uniformly within the
    class (Mahajan et al., ECCV 2018; Kang et al., ICLR 2020); ``len(targets)`` positions.
    """

    def __call__(self, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if len(targets) == 0:
            return torch.zeros(0, dtype=torch.long)
        inverse, counts = _class_index(targets)
        return _resample(targets, counts.double().sqrt(), inverse, counts, generator)


@dataclass(frozen=True)
class EffectiveNumberSamplerConfig(SamplerConfig):
    """Effective-number sampler options."""

    name: str = "effective_number"
    beta: float = 0.9999
    """Beta of the effective number; a sample of class c is drawn with probability proportional
    to (1 - beta) / (1 - beta^n_c)."""

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 1:
            raise FieldError("beta", "must be in [0, 1)")


@register_sampler("effective_number")
class EffectiveNumberSampler(Sampler):
    """Effective-number resampling: sample weight (1-beta)/(1-beta^n_y), with replacement.

    The class-balanced weight of Cui et al. (CVPR 2019) used as a sampling rate instead of a loss
    weight: each sample of class ``y`` is drawn with probability proportional to
    ``w_y = (1 - beta) / (1 - beta^{n_y})``, so class ``c`` gets a share proportional to
    ``n_c w_c = n_c / E_c`` (``E_c`` its effective number) and, in expectation, an epoch weights
    the samples exactly like the class-balanced loss. ``beta = 0`` is instance-balanced
    (shares proportional to ``n_c``), ``beta -> 1`` class-balanced (equal shares); values in
    between interpolate. ``len(targets)`` positions.

    Args:
        cfg: an :class:`EffectiveNumberSamplerConfig`.
    """

    config_cls = EffectiveNumberSamplerConfig
    cfg: EffectiveNumberSamplerConfig

    def __call__(self, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if len(targets) == 0:
            return torch.zeros(0, dtype=torch.long)
        inverse, counts = _class_index(targets)
        n = counts.double()
        weight = (1.0 - self.cfg.beta) / (1.0 - torch.pow(self.cfg.beta, n))
        return _resample(targets, n * weight, inverse, counts, generator)


@dataclass(frozen=True)
class ClassAwareSamplerConfig(SamplerConfig):
    """Class-aware sampler options."""

    name: str = "class_aware"
    samples_per_class: int = 1
    """Consecutive samples of a class per visit: 1 is Shen et al.'s round robin; Kang et al.'s
    decoupling configs and Liu et al.'s two-stage LT-CIL code use 4."""

    def __post_init__(self) -> None:
        if self.samples_per_class < 1:
            raise FieldError("samples_per_class", "must be >= 1")


@register_sampler("class_aware")
class ClassAwareSampler(Sampler):
    """Class-aware round-robin sampling (Shen et al., ECCV 2016): cycle the classes, take the
    next ``samples_per_class`` samples of each.

    The epoch is a sequence of cycles; each cycle visits every class once in a freshly shuffled
    order and takes that class's next ``samples_per_class`` samples from its own shuffled list,
    which is reshuffled whenever it is exhausted. With one sample per visit, each aligned block of
    ``K`` positions (``K`` classes) holds one sample of every class. The epoch has
    ``len(targets)`` positions (the last visit or cycle may be partial), like the reference
    implementations (Kang et al.'s and Liu et al.'s ``ClassAwareSampler``). Fully vectorised:
    per-class lists are built with two stable sorts.

    Args:
        cfg: a :class:`ClassAwareSamplerConfig`.
    """

    config_cls = ClassAwareSamplerConfig
    cfg: ClassAwareSamplerConfig

    def __call__(self, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        length = len(targets)
        if length == 0:
            return torch.zeros(0, dtype=torch.long)
        per_visit = self.cfg.samples_per_class
        inverse, counts = _class_index(targets)
        k = len(counts)
        visits = -(-length // per_visit)
        cycles = -(-visits // k)
        # Class visited at each visit: one random permutation of the classes per cycle.
        order = torch.rand(cycles, k, generator=generator).argsort(dim=1).flatten()[:visits]
        # Draw r of class c is position r of the concatenation of ceil(cycles * s / n_c)
        # independent shuffles of that class's samples. Build all those shuffles at once: each
        # sample is repeated once per round of its class, then entries are sorted by
        # (class, round) with random order inside each group.
        rounds = -(-(cycles * per_visit) // counts)  # per class
        reps = rounds[inverse]
        sample = torch.repeat_interleave(torch.arange(length), reps)
        group_start = torch.cumsum(reps, 0) - reps
        round_of = torch.arange(len(sample)) - torch.repeat_interleave(group_start, reps)
        key = inverse[sample] * int(rounds.max()) + round_of
        shuffle = torch.randperm(len(sample), generator=generator)
        ordered = shuffle[torch.sort(key[shuffle], stable=True).indices]
        lists = sample[ordered]
        class_start = torch.cumsum(counts * rounds, 0) - counts * rounds
        visit_of_class = torch.arange(visits) // k  # the how-many-th visit of its class
        first = class_start[order] + visit_of_class * per_visit
        draws = first[:, None] + torch.arange(per_visit)
        return lists[draws.flatten()[:length]]
