"""Exemplar memory budgets: fixed total shrinking with the classes, fixed per class, reservoir."""

from __future__ import annotations

import torch

from cilkit.buffers import ExemplarMemory, herding
from cilkit.config.schema import MemoryConfig

# 6 classes; class 5 has only 3 images.
COUNTS = [20, 20, 20, 20, 20, 3]
TARGETS = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])
FEATURES = torch.randn(len(TARGETS), 8, generator=torch.Generator().manual_seed(0))


def class_indices(c: int) -> torch.Tensor:
    return torch.nonzero(TARGETS == c).flatten()


def features(idx: torch.Tensor) -> torch.Tensor:
    return FEATURES[idx]


def _update(mem: ExemplarMemory, new: tuple[int, ...], seen: int) -> None:
    mem.update(new, seen, class_indices, features, TARGETS, torch.Generator().manual_seed(1))


def test_fixed_total_is_split_and_shrinks_keeping_the_herding_prefix():
    mem = ExemplarMemory(MemoryConfig(memory_size=24, selection="herding"))
    _update(mem, (0, 1), 2)
    assert mem.counts() == {0: 12, 1: 12}
    first = mem.per_class[0].clone()
    assert torch.equal(first, class_indices(0)[herding(features(class_indices(0)), 12)])
    _update(mem, (2, 3), 4)
    assert mem.counts() == {0: 6, 1: 6, 2: 6, 3: 6}
    assert torch.equal(mem.per_class[0], first[:6])  # shrinking keeps the prefix
    _update(mem, (4, 5), 6)
    assert mem.counts() == {0: 4, 1: 4, 2: 4, 3: 4, 4: 4, 5: 3}  # class 5 keeps all it has
    assert len(mem) <= 24
    assert torch.all(
        TARGETS[mem.indices()]
        == torch.repeat_interleave(torch.arange(6), torch.tensor([4, 4, 4, 4, 4, 3]))
    )


def test_fixed_per_class_grows():
    mem = ExemplarMemory(MemoryConfig(memory_per_class=5, selection="random"))
    _update(mem, (0, 1), 2)
    _update(mem, (2, 3, 4, 5), 6)
    assert mem.counts() == {0: 5, 1: 5, 2: 5, 3: 5, 4: 5, 5: 3}
    for c, idx in mem.per_class.items():
        assert torch.all(TARGETS[idx] == c) and len(set(idx.tolist())) == len(idx)


def test_reservoir_respects_capacity_and_state_round_trip():
    mem = ExemplarMemory(MemoryConfig(memory_size=10, selection="reservoir"))
    _update(mem, (0, 1), 2)
    _update(mem, (2, 3, 4, 5), 6)
    assert len(mem) == 10 and mem.num_stream_seen == sum(COUNTS)
    other = ExemplarMemory(MemoryConfig(memory_size=10, selection="reservoir"))
    other.load_state_dict(mem.state_dict())
    assert (
        torch.equal(other.indices(), mem.indices()) and other.num_stream_seen == mem.num_stream_seen
    )
