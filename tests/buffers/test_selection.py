"""Exemplar selection strategies, class means and nearest-mean scores."""

from __future__ import annotations

import math

import pytest
import torch

from cilkit.buffers.selection import (
    SELECTORS,
    Selector,
    class_balanced,
    class_means,
    herding,
    nme_logits,
    random,
    reservoir_update,
)


def _normalise(row: list[float]) -> list[float]:
    norm = max(math.sqrt(sum(v * v for v in row)), 1e-12)
    return [v / norm for v in row]


def herding_reference(features: torch.Tensor, m: int) -> list[int]:
    """iCaRL Algorithm 4 written out with plain Python loops."""
    phi = [_normalise(row) for row in features.double().tolist()]
    n, d = len(phi), len(phi[0])
    mu = [sum(row[j] for row in phi) / n for j in range(d)]
    running = [0.0] * d
    picked: list[int] = []
    for k in range(1, min(m, n) + 1):
        best, best_dist = -1, math.inf
        for i in range(n):
            if i in picked:
                continue
            dist = math.sqrt(sum((mu[j] - (running[j] + phi[i][j]) / k) ** 2 for j in range(d)))
            if dist < best_dist:
                best, best_dist = i, dist
        picked.append(best)
        running = [running[j] + phi[best][j] for j in range(d)]
    return picked


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("n", "d", "m"), [(1, 3, 1), (10, 4, 5), (30, 8, 12), (25, 6, 25), (12, 5, 20)]
)
def test_herding_matches_reference(seed: int, n: int, d: int, m: int) -> None:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=g) * 3 + torch.rand(d, generator=g)
    got = herding(features, m)
    assert got.dtype == torch.long and got.shape == (min(m, n),)
    assert got.tolist() == herding_reference(features, m)
    assert len(set(got.tolist())) == min(m, n)


def test_herding_float32_and_ties() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    features = torch.cat([base, base])  # every point twice: ties go to the lower position
    got = herding(features.float(), 12).tolist()
    assert got == herding_reference(features, 12)
    assert sorted(got) == list(range(12))
    for i in range(6):
        assert got.index(i) < got.index(i + 6)


def test_herding_prefix_property_and_edge_cases() -> None:
    g = torch.Generator().manual_seed(1)
    features = torch.randn(40, 16, generator=g)
    full = herding(features, 40)
    for m in (0, 1, 5, 17, 39):
        assert torch.equal(herding(features, m), full[:m])
    assert herding(features, 100).shape == (40,)
    assert herding(torch.empty(0, 16), 5).shape == (0,)
    # Scale does not matter: the features are normalised first.
    assert torch.equal(herding(features * 7.5, 10), full[:10])


@pytest.mark.parametrize("fn", [random, class_balanced])
def test_random_selection(fn) -> None:
    a = fn(50, 20, torch.Generator().manual_seed(3))
    b = fn(torch.randn(50, 4), 20, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.dtype == torch.long and a.shape == (20,)
    assert len(set(a.tolist())) == 20 and 0 <= a.min() and a.max() < 50
    c = fn(50, 20, torch.Generator().manual_seed(4))
    assert not torch.equal(a, c)
    assert sorted(fn(7, 10, torch.Generator().manual_seed(0)).tolist()) == list(range(7))
    assert fn(7, 0, None).shape == (0,)
    assert torch.equal(a[:5], fn(50, 5, torch.Generator().manual_seed(3)))


def test_registry() -> None:
    assert SELECTORS.names() == ["class_balanced", "herding", "random", "reservoir"]
    flags = {e.name: (e.obj.per_class, e.obj.needs_features) for e in SELECTORS.entries()}
    assert flags == {
        "herding": (True, True),
        "random": (True, False),
        "class_balanced": (True, False),
        "reservoir": (False, False),
    }
    for entry in SELECTORS.entries():
        assert isinstance(entry.obj, Selector) and callable(entry.obj)
        assert entry.description
    assert SELECTORS.get("herding").obj.fn is herding
    assert torch.equal(
        SELECTORS.get("random").obj(10, 3, torch.Generator().manual_seed(0)),
        random(10, 3, torch.Generator().manual_seed(0)),
    )


def reservoir_reference(
    current: list[int], num_seen: int, new: list[int], capacity: int, uniforms: list[float]
) -> list[int]:
    """Algorithm R item by item, with j = floor(u * (i + 1)) from the given uniform draws."""
    buffer = list(current)
    draws = iter(uniforms)
    for offset, item in enumerate(new):
        i = num_seen + offset
        if i < capacity:
            buffer.append(item)
        else:
            j = min(int(next(draws) * (i + 1)), i)
            if j < capacity:
                buffer[j] = item
    return buffer


def test_reservoir_matches_sequential_reference() -> None:
    capacity, num_seen = 6, 0
    buffer = torch.empty(0, dtype=torch.long)
    gen = torch.Generator().manual_seed(11)
    twin = torch.Generator().manual_seed(11)
    for chunk in (
        torch.arange(0, 4),
        torch.arange(4, 9),
        torch.arange(9, 40),
        torch.arange(40, 41),
    ):
        before, seen_before = buffer.tolist(), num_seen
        buffer, num_seen = reservoir_update(buffer, num_seen, chunk + 1000, capacity, gen)
        n_draws = max(0, seen_before + len(chunk) - max(capacity, seen_before))
        uniforms = torch.rand(n_draws, generator=twin, dtype=torch.float64).tolist()
        expected = reservoir_reference(
            before, seen_before, (chunk + 1000).tolist(), capacity, uniforms
        )
        assert buffer.tolist() == expected
        assert len(buffer) == min(num_seen, capacity)
    assert num_seen == 41


def test_reservoir_capacity_and_validation() -> None:
    buffer, seen = reservoir_update(torch.empty(0, dtype=torch.long), 0, torch.arange(3), 5)
    assert buffer.tolist() == [0, 1, 2] and seen == 3
    buffer, seen = reservoir_update(
        buffer, seen, torch.arange(3, 100), 5, torch.Generator().manual_seed(0)
    )
    assert len(buffer) == 5 and seen == 100 and len(set(buffer.tolist())) == 5
    empty, seen = reservoir_update(torch.empty(0, dtype=torch.long), 0, torch.arange(10), 0)
    assert empty.shape == (0,) and seen == 10
    with pytest.raises(ValueError):
        reservoir_update(torch.arange(2), 5, torch.arange(3), 5)


def test_reservoir_is_uniform() -> None:
    stream, capacity, trials = 50, 10, 2000
    gen = torch.Generator().manual_seed(1234)
    kept = torch.zeros(stream)
    chunks = [7, 1, 12, 30]  # uneven batches of the stream
    for _ in range(trials):
        buffer, seen, start = torch.empty(0, dtype=torch.long), 0, 0
        for size in chunks:
            buffer, seen = reservoir_update(
                buffer, seen, torch.arange(start, start + size), capacity, gen
            )
            start += size
        assert len(buffer) == capacity and len(set(buffer.tolist())) == capacity
        kept[buffer] += 1
    freq = kept / trials
    assert (freq - capacity / stream).abs().max() < 0.045, freq


def class_means_reference(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, flipped: torch.Tensor | None
) -> torch.Tensor:
    out = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    for c in range(num_classes):
        rows = [_normalise(r) for r in features[labels == c].double().tolist()]
        if flipped is not None:
            rows += [_normalise(r) for r in flipped[labels == c].double().tolist()]
        if rows:
            mean = [sum(col) / len(rows) for col in zip(*rows, strict=True)]
            out[c] = torch.tensor(_normalise(mean), dtype=torch.float64)
    return out


@pytest.mark.parametrize("with_flip", [False, True])
def test_class_means(with_flip: bool) -> None:
    g = torch.Generator().manual_seed(5)
    features = torch.randn(60, 8, generator=g)
    labels = torch.randint(0, 5, (60,), generator=g)
    labels[labels == 3] = 0  # class 3 has no samples
    flipped = torch.randn(60, 8, generator=g) if with_flip else None
    means = class_means(features, labels, 6, flipped_features=flipped)
    assert means.shape == (6, 8)
    expected = class_means_reference(features, labels, 6, flipped).float()
    torch.testing.assert_close(means, expected, rtol=1e-5, atol=1e-6)
    assert torch.all(means[3] == 0) and torch.all(means[5] == 0)
    torch.testing.assert_close(means[[0, 1, 2, 4]].norm(dim=1), torch.ones(4))


def test_nme_logits_picks_nearest_mean() -> None:
    g = torch.Generator().manual_seed(6)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1) * 5
    labels = torch.arange(4).repeat_interleave(20)
    features = centres[labels] + 0.3 * torch.randn(80, 16, generator=g)
    means = class_means(features, labels, 4)
    scores = nme_logits(features, means)
    assert scores.shape == (80, 4)
    phi = torch.nn.functional.normalize(features, dim=1)
    for i in range(80):
        dists = [float((phi[i] - means[c]).norm()) for c in range(4)]
        assert scores[i].argmax().item() == min(range(4), key=dists.__getitem__)
        torch.testing.assert_close(-scores[i], torch.tensor(dists), rtol=1e-4, atol=1e-4)
    assert (scores.argmax(dim=1) == labels).float().mean() > 0.95


def _class_means_before_the_flag(features, labels, num_classes, flipped=None):
    """The shared function as it was before ``normalise`` existed (for bit-exact comparison)."""
    phi = torch.nn.functional.normalize(features.float(), dim=1)
    if flipped is not None:
        phi = torch.cat([phi, torch.nn.functional.normalize(flipped.float(), dim=1)])
        labels = torch.cat([labels, labels])
    sums = phi.new_zeros(num_classes, phi.shape[1]).index_add_(0, labels, phi)
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes].clamp_min(1)
    return torch.nn.functional.normalize(sums / counts.unsqueeze(1).float(), dim=1)


@pytest.mark.parametrize("with_flip", [False, True])
def test_class_means_default_is_unchanged_by_the_normalise_flag(with_flip: bool) -> None:
    g = torch.Generator().manual_seed(7)
    features, labels = torch.randn(40, 6, generator=g), torch.randint(0, 4, (40,), generator=g)
    flipped = torch.randn(40, 6, generator=g) if with_flip else None
    before = _class_means_before_the_flag(features, labels, 5, flipped)
    assert torch.equal(class_means(features, labels, 5, flipped), before)
    assert torch.equal(class_means(features, labels, 5, flipped, normalise=True), before)


def test_class_means_without_normalising_are_plain_per_class_means() -> None:
    features = torch.tensor([[1.0, 2.0], [3.0, 6.0], [-4.0, 0.5], [10.0, -2.0], [2.0, 2.0]])
    labels = torch.tensor([0, 0, 2, 2, 2])
    means = class_means(features, labels, 4, normalise=False)
    hand = torch.tensor([[2.0, 4.0], [0.0, 0.0], [8.0 / 3, 0.5 / 3], [0.0, 0.0]])
    torch.testing.assert_close(means, hand)  # classes 1 and 3 have no samples: zero rows
    flipped = -features
    both = class_means(features, labels, 4, flipped, normalise=False)
    assert torch.equal(both, torch.zeros(4, 2))  # each class's mean over both sets
    g = torch.Generator().manual_seed(8)  # and per class, exactly what the engine did before
    features, labels = torch.randn(50, 5, generator=g) * 3, torch.randint(0, 6, (50,), generator=g)
    sums = features.new_zeros(6, 5).index_add_(0, labels, features)
    before = sums / torch.bincount(labels, minlength=6).clamp_min(1)[:, None]
    assert torch.equal(class_means(features, labels, 6, normalise=False), before)
