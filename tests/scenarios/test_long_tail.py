"""Long-tailed profiles: literature sizes of CIFAR-LT, step profile, seeded subsampling."""

from __future__ import annotations

import pytest
import torch

from cilkit.config.schema import LongTailConfig
from cilkit.data.base import ImageSet
from cilkit.scenarios.long_tail import LongTailProfile, apply_long_tail

# (classes, images per class, imbalance factor, total images of the long-tailed split)
CIFAR_LT_SIZES = [
    (100, 500, 100, 10_847),
    (100, 500, 50, 12_608),
    (100, 500, 10, 19_573),
    (10, 5000, 100, 12_406),
    (10, 5000, 50, 13_996),
    (10, 5000, 10, 20_431),
]


def _tiny_split(num_classes: int, per_class: int) -> ImageSet:
    """A split of 1x1 images whose single pixel holds the class id (classes interleaved)."""
    labels = torch.arange(num_classes).repeat(per_class)  # 0 1 2 .. 0 1 2 ..
    images = labels.to(torch.uint8).reshape(-1, 1, 1, 1).clone()
    return ImageSet(labels, tuple(f"c{i}" for i in range(num_classes)), images=images)


@pytest.mark.parametrize(("classes", "per_class", "imb", "total"), CIFAR_LT_SIZES)
def test_cifar_lt_sizes_from_counts(classes: int, per_class: int, imb: int, total: int) -> None:
    counts = LongTailProfile("exp", imb).counts(classes, [per_class] * classes)
    assert sum(counts) == total
    assert counts[0] == per_class
    assert counts[-1] == per_class // imb
    assert counts == sorted(counts, reverse=True)
    # the same without available counts, with n_max given
    assert LongTailProfile("exp", imb, max_per_class=per_class).counts(classes, None) == counts


@pytest.mark.parametrize(("classes", "per_class", "imb", "total"), CIFAR_LT_SIZES)
def test_cifar_lt_sizes_on_split(classes: int, per_class: int, imb: int, total: int) -> None:
    split = _tiny_split(classes, per_class)
    subset, kept = apply_long_tail(split, LongTailConfig(kind="exp", imb_factor=imb, seed=3))
    expected = LongTailProfile("exp", imb).counts(classes, [per_class] * classes)
    assert len(subset) == len(kept) == total
    assert subset.class_counts().tolist() == expected
    assert subset.class_names == split.class_names
    assert subset.image_shape == (1, 1, 1)
    assert kept.dtype == torch.long
    assert torch.equal(kept, kept.sort().values)
    assert kept.unique().numel() == total
    assert torch.equal(subset.labels, split.labels[kept])
    assert subset.images is not None
    assert torch.equal(subset.images.reshape(-1).long(), subset.labels)  # right class's images


def test_known_exp_counts() -> None:
    counts = LongTailProfile("exp", 100).counts(10, [5000] * 10)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_step_profile() -> None:
    assert LongTailProfile("step", 10).counts(10, [500] * 10) == [500] * 5 + [50] * 5
    assert LongTailProfile("step", 100).counts(5, [500] * 5) == [500, 500, 5, 5, 5]
    split = _tiny_split(100, 500)
    subset, _ = apply_long_tail(split, LongTailConfig(kind="step", imb_factor=100))
    assert len(subset) == 50 * 500 + 50 * 5


def test_max_per_class_and_caps() -> None:
    counts = LongTailProfile("exp", 100, max_per_class=500).counts(10, [6000] * 10)
    assert counts[0] == 500
    assert counts[-1] == 5
    assert counts == sorted(counts, reverse=True)
    # n_max defaults to the largest class; every count is capped at what the class has
    assert LongTailProfile("exp", 1).counts(3, [10, 4, 7]) == [10, 4, 7]
    assert LongTailProfile("exp", 1, max_per_class=8).counts(3, [10, 4, 7]) == [8, 4, 7]
    assert LongTailProfile("exp", 100).counts(1, [42]) == [42]  # one class keeps n_max


def test_fashion_mnist_style_split() -> None:
    split = _tiny_split(10, 600)
    cfg = LongTailConfig(kind="exp", imb_factor=100, max_per_class=500, seed=0)
    subset, _ = apply_long_tail(split, cfg)
    counts = subset.class_counts().tolist()
    assert counts[0] == 500
    assert counts[-1] == 5
    assert counts == LongTailProfile("exp", 100, 500).counts(10, [600] * 10)


def test_invalid_profiles() -> None:
    with pytest.raises(ValueError, match="kind"):
        LongTailProfile("linear", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="imb_factor"):
        LongTailProfile("exp", 0.5)
    with pytest.raises(ValueError, match="n_max"):
        LongTailProfile("exp", 10).counts(10, None)
    with pytest.raises(ValueError, match="available counts"):
        LongTailProfile("exp", 10).counts(10, [5] * 9)
    with pytest.raises(ValueError, match="without training images"):
        apply_long_tail(_tiny_split(4, 20), LongTailConfig(imb_factor=50, max_per_class=20))


def test_seed_determinism() -> None:
    split = _tiny_split(10, 100)
    a = apply_long_tail(split, LongTailConfig(imb_factor=10, seed=7))[1]
    b = apply_long_tail(split, LongTailConfig(imb_factor=10, seed=7))[1]
    c = apply_long_tail(split, LongTailConfig(imb_factor=10, seed=8))[1]
    assert torch.equal(a, b)
    assert len(a) == len(c)
    assert not torch.equal(a, c)


def test_whole_classes_are_kept_when_not_subsampled() -> None:
    split = _tiny_split(3, 10)
    subset, kept = apply_long_tail(split, LongTailConfig(imb_factor=1))
    assert torch.equal(kept, torch.arange(30))
    assert torch.equal(subset.labels, split.labels)


def test_paths_split() -> None:
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1])
    paths = tuple(f"img_{i}_class{int(c)}.png" for i, c in enumerate(labels))
    split = ImageSet(labels, ("a", "b"), paths=paths, image_shape=(3, 64, 64))
    subset, kept = apply_long_tail(split, LongTailConfig(imb_factor=2, seed=1))
    # n_max = 7 (class 1); class 0 keeps min(7, 5) = 5, class 1 floor(7 / 2) = 3 of its 7
    assert subset.class_counts().tolist() == [5, 3]
    assert subset.images is None
    assert subset.paths == tuple(paths[i] for i in kept.tolist())
    pairs = zip(subset.paths, subset.labels.tolist(), strict=True)
    assert all(p.endswith(f"class{c}.png") for p, c in pairs)
    assert subset.image_shape == (3, 64, 64)
