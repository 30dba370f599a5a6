"""Epoch samplers: class frequencies on a long-tailed label vector, coverage, determinism."""

from __future__ import annotations

import pytest
import torch

from cilkit.config.loader import build_config
from cilkit.config.schema import SamplerConfig
from cilkit.data.samplers import SAMPLERS, EffectiveNumberSamplerConfig, create_sampler
from cilkit.errors import ConfigError

COUNTS = torch.tensor([1000, 100, 10])
# Shuffled, with non-contiguous label values, so nothing relies on sorted or 0..K-1 labels.
LABELS = torch.tensor([3, 7, 5])


def long_tailed_targets() -> torch.Tensor:
    targets = torch.repeat_interleave(LABELS, COUNTS)
    return targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(123))]


def build(name: str, **options):
    cls = SAMPLERS.get(name).config_cls or SamplerConfig
    return create_sampler(cls(name=name, **options))


def class_shares(name: str, seed: int = 0, epochs: int = 20, **options) -> torch.Tensor:
    """Fraction of draws per class (in COUNTS order) over a few epochs."""
    sampler = build(name, **options)
    targets = long_tailed_targets()
    gen = torch.Generator().manual_seed(seed)
    drawn = torch.cat([targets[sampler(targets, gen)] for _ in range(epochs)])
    return torch.stack([(drawn == label).double().mean() for label in LABELS])


def expected_shares(mass: torch.Tensor) -> torch.Tensor:
    mass = mass.double()
    return mass / mass.sum()


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_positions_valid_and_reproducible(name):
    sampler = build(name)
    targets = long_tailed_targets()
    first = sampler(targets, torch.Generator().manual_seed(7))
    again = sampler(targets, torch.Generator().manual_seed(7))
    other = sampler(targets, torch.Generator().manual_seed(8))
    assert first.dtype == torch.long and first.ndim == 1
    assert len(first) == len(targets)
    assert first.min() >= 0 and first.max() < len(targets)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert len(sampler(targets[:0], torch.Generator())) == 0


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_registered_with_description(name):
    assert SAMPLERS.get(name).description


def test_instance_covers_each_sample_once():
    targets = long_tailed_targets()
    positions = build("instance")(targets, torch.Generator().manual_seed(0))
    assert torch.equal(positions.sort().values, torch.arange(len(targets)))


def test_class_balanced_equal_shares():
    shares = class_shares("class_balanced")
    torch.testing.assert_close(
        shares, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01, rtol=0
    )


def test_sqrt_shares():
    shares = class_shares("sqrt")
    expected = expected_shares(COUNTS.double().sqrt())
    torch.testing.assert_close(shares, expected, atol=0.01, rtol=0)


def test_effective_number_shares():
    beta = 0.999
    shares = class_shares("effective_number", beta=beta)
    n = COUNTS.double()
    expected = expected_shares(n * (1 - beta) / (1 - beta**n))
    torch.testing.assert_close(shares, expected, atol=0.01, rtol=0)
    # between instance-balanced and class-balanced: head share shrinks, tail grows
    instance = expected_shares(n)
    assert shares[0] < instance[0] and shares[2] > instance[2]
    assert shares[0] > 1 / 3 and shares[2] < 1 / 3


def test_effective_number_limits():
    n = COUNTS.double()
    near_balanced = class_shares("effective_number", beta=0.999999, epochs=10)
    torch.testing.assert_close(
        near_balanced, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.015, rtol=0
    )
    instance = class_shares("effective_number", beta=0.0, epochs=10)
    torch.testing.assert_close(instance, expected_shares(n), atol=0.01, rtol=0)


def test_resampling_within_a_class_is_uniform():
    targets = long_tailed_targets()
    tail = (targets == LABELS[2]).nonzero().squeeze(1)
    gen = torch.Generator().manual_seed(0)
    sampler = build("class_balanced")
    drawn = torch.cat([sampler(targets, gen) for _ in range(30)])
    hits = torch.isin(drawn, tail)
    per_sample = torch.bincount(drawn[hits], minlength=len(targets))[tail].double()
    assert (per_sample > 0).all()
    assert per_sample.std() / per_sample.mean() < 0.15


def test_class_aware_alternates_classes():
    targets = long_tailed_targets()
    positions = build("class_aware")(targets, torch.Generator().manual_seed(0))
    labels = targets[positions]
    k = len(LABELS)
    full = len(labels) // k * k
    blocks = labels[:full].view(-1, k).sort(dim=1).values
    assert torch.equal(blocks, LABELS.sort().values.expand_as(blocks))
    # the class order changes from cycle to cycle
    assert len({tuple(b) for b in labels[:full].view(-1, k).tolist()}) > 1
    shares = torch.stack([(labels == c).double().mean() for c in LABELS])
    torch.testing.assert_close(
        shares, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01, rtol=0
    )


def test_class_aware_walks_each_class_list_before_repeating():
    targets = long_tailed_targets()
    positions = build("class_aware")(targets, torch.Generator().manual_seed(4))
    for label, count in zip(LABELS.tolist(), COUNTS.tolist(), strict=True):
        members = (targets == label).nonzero().squeeze(1).sort().values
        visits = positions[targets[positions] == label]
        rounds = len(visits) // count
        for r in range(rounds):  # each full pass is a permutation of the class's samples
            assert torch.equal(visits[r * count : (r + 1) * count].sort().values, members)
        if rounds > 1:
            assert not torch.equal(visits[:count], visits[count : 2 * count])
        if rounds == 0:  # head class: visited samples are distinct
            assert len(visits.unique()) == len(visits)


def test_class_aware_with_four_samples_per_visit():
    """Liu et al.'s stage-2 sampler: each class visit takes 4 consecutive samples of the class."""
    targets = long_tailed_targets()
    cfg = build_config({"train": {"sampler": {"name": "class_aware", "samples_per_class": 4}}})
    sampler = create_sampler(cfg.train.sampler)
    positions = sampler(targets, torch.Generator().manual_seed(1))
    assert len(positions) == len(targets)
    labels = targets[positions]
    visits = labels[: len(labels) // 4 * 4].view(-1, 4)
    assert (visits == visits[:, :1]).all()  # one class per visit of 4
    k = len(LABELS)
    cycles = visits[: len(visits) // k * k, 0].view(-1, k).sort(dim=1).values
    assert torch.equal(cycles, LABELS.sort().values.expand_as(cycles))  # each class once a cycle
    for label, count in zip(LABELS.tolist(), COUNTS.tolist(), strict=True):
        drawn = positions[labels == label]
        for r in range(len(drawn) // count):  # full passes over the class are permutations
            members = (targets == label).nonzero().squeeze(1)
            assert torch.equal(drawn[r * count : (r + 1) * count].sort().values, members)
    one = create_sampler(
        build_config({"train": {"sampler": {"name": "class_aware"}}}).train.sampler
    )
    assert one.cfg.samples_per_class == 1
    with pytest.raises(ConfigError, match="samples_per_class: must be >= 1"):
        build_config({"train": {"sampler": {"name": "class_aware", "samples_per_class": 0}}})


def test_sampler_configs_load_by_name():
    cfg = build_config({"train": {"sampler": {"name": "effective_number", "beta": 0.99}}})
    assert cfg.train.sampler == EffectiveNumberSamplerConfig(beta=0.99)
    with pytest.raises(ConfigError, match="beta"):
        build_config({"train": {"sampler": {"name": "effective_number", "beta": 1.0}}})
    cfg = build_config({"train": {"sampler": {"name": "class_aware"}}})
    assert cfg.train.sampler.name == "class_aware"
