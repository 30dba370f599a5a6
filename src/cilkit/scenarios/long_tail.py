"""Long-tailed training splits: the exponential and step profiles of CIFAR-LT.

Class ``i`` (the original class id, in id order: the convention of the CIFAR-10/100-LT literature,
Cui et al. 2019 and Cao et al. 2019, LDAM-DRW) keeps ``n_i`` training images:

* ``exp``: ``n_i = floor(n_max * IF^(-i / (C - 1)))``, from ``n_max`` down to ``n_max / IF``;
* ``step``: ``n_max`` for the first ``C // 2`` classes, ``floor(n_max / IF)`` for the rest;

with ``IF`` the imbalance factor (largest over smallest class) and ``n_max`` the configured
``max_per_class`` or else the largest class of the split. Every ``n_i`` is also capped at the
number of images class ``i`` has. The floor is computed exactly as the LDAM-DRW reference code
(``int(n_max * (1 / IF) ** (i / (C - 1.0)))``), which gives the sizes reported in the literature:
CIFAR-100-LT holds 10,847 / 12,608 / 19,573 images for IF 100 / 50 / 10 and CIFAR-10-LT 12,406 /
13,996 / 20,431. The test split is left untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from cilkit.config.schema import LongTailConfig
from cilkit.data.base import ImageSet

__all__ = ["LongTailProfile", "apply_long_tail"]


@dataclass(frozen=True)
class LongTailProfile:
    """How many training images each class keeps.

    Attributes:
        kind: ``"exp"`` (exponential decay over class ids) or ``"step"`` (half of the classes
            keep ``n_max``, the other half ``n_max / imb_factor``).
        imb_factor: imbalance factor ``IF >= 1``, the ratio of the largest to the smallest class.
        max_per_class: ``n_max``; ``None`` uses the largest available class.
    """

    kind: Literal["exp", "step"] = "exp"
    imb_factor: float = 100.0
    max_per_class: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("exp", "step"):
            raise ValueError(f"kind must be 'exp' or 'step', got {self.kind!r}")
        if not self.imb_factor >= 1:
            raise ValueError(f"imb_factor must be >= 1, got {self.imb_factor}")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1, got {self.max_per_class}")

    @classmethod
    def from_config(cls, cfg: LongTailConfig) -> LongTailProfile:
        """The profile described by a :class:`~cilkit.config.schema.LongTailConfig`."""
        return cls(kind=cfg.kind, imb_factor=cfg.imb_factor, max_per_class=cfg.max_per_class)

    def counts(self, num_classes: int, available: Sequence[int] | None = None) -> list[int]:
        """Number of training images kept for each class ``0 .. num_classes - 1``.

        Args:
            num_classes: number of classes ``C``.
            available: images class ``i`` has, ``available[i]``; each count is capped at it.
                ``None`` means unlimited, which needs ``max_per_class``.

        Returns:
            ``n_0 .. n_{C-1}`` (see the module docstring).

        Raises:
            ValueError: if ``num_classes < 1``, ``available`` has the wrong length or negative
                entries, or neither ``max_per_class`` nor ``available`` gives ``n_max``.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        caps = None if available is None else [int(a) for a in available]
        if caps is not None:
            if len(caps) != num_classes:
                raise ValueError(f"{len(caps)} available counts for {num_classes} classes")
            if min(caps) < 0:
                raise ValueError("available counts must be >= 0")
        if self.max_per_class is not None:
            n_max = self.max_per_class
        elif caps is not None:
            n_max = max(caps)
        else:
            raise ValueError("n_max is unknown: give max_per_class or the available counts")

        ratio = 1.0 / self.imb_factor  # the reference code's ``imb_factor``
        if self.kind == "exp":
            span = max(num_classes - 1.0, 1.0)  # one class: n_0 = n_max
            counts = [int(n_max * ratio ** (i / span)) for i in range(num_classes)]
        else:
            half = num_classes // 2
            counts = [n_max if i < half else int(n_max * ratio) for i in range(num_classes)]
        if caps is not None:
            counts = [min(n, cap) for n, cap in zip(counts, caps, strict=True)]
        return counts


def apply_long_tail(split: ImageSet, cfg: LongTailConfig) -> tuple[ImageSet, torch.Tensor]:
    """Subsample a training split to a long-tailed profile.

    Class ``i`` keeps ``n_i`` of its images (:meth:`LongTailProfile.counts` with the split's
    class sizes as ``available``), drawn uniformly without replacement with a
    :class:`torch.Generator` seeded by ``cfg.seed``: the same split and config always keep the same
    images. The selection is vectorised: one random permutation, a stable sort by class and a rank
    test within each class.

    Args:
        split: the training split.
        cfg: profile and seed.

    Returns:
        ``(subset, kept)``: the long-tailed split (same class names and image shape; images or
        paths, and labels, restricted to the kept samples in their original order) and the kept
        positions into ``split``, an int64 tensor sorted increasingly.

    Raises:
        ValueError: if the profile leaves a class that has images without any (``n_max / IF <
            1``; lower ``imb_factor`` or raise ``max_per_class``).
    """
    labels = split.labels.detach().to("cpu", torch.long)
    available = torch.bincount(labels, minlength=split.num_classes)
    profile = LongTailProfile.from_config(cfg)
    wanted = profile.counts(split.num_classes, available.tolist())
    emptied = [
        i
        for i, (n, a) in enumerate(zip(wanted, available.tolist(), strict=True))
        if n == 0 and a > 0
    ]
    if emptied:
        raise ValueError(
            f"the long-tail profile (kind={cfg.kind}, imb_factor={cfg.imb_factor}, "
            f"n_max={cfg.max_per_class or int(available.max())}) leaves {len(emptied)} classes "
            f"without training images (first: {emptied[0]}); lower imb_factor or raise "
            "max_per_class"
        )
    keep_per_class = torch.tensor(wanted, dtype=torch.long)

    generator = torch.Generator().manual_seed(int(cfg.seed))
    perm = torch.randperm(len(labels), generator=generator)
    order = perm[torch.argsort(labels[perm], stable=True)]  # grouped by class, random within
    grouped = labels[order]
    starts = torch.cumsum(available, 0) - available
    rank = torch.arange(len(labels)) - starts[grouped]  # position within the class
    kept = order[rank < keep_per_class[grouped]].sort().values

    subset = dataclasses.replace(
        split,
        labels=split.labels[kept.to(split.labels.device)],
        images=None if split.images is None else split.images[kept.to(split.images.device)],
        paths=None if split.paths is None else tuple(split.paths[i] for i in kept.tolist()),
        image_shape=split.image_shape,
    )
    return subset, kept
