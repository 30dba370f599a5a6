"""Exemplar memory: dataset indices of the kept samples of each class, chosen by a selector.

The budget is either a fixed total (``memory_size``, split evenly over the seen classes and
shrunk as classes arrive, as in iCaRL) or fixed per class (``memory_per_class``). Per-class
selectors return positions in priority order, so shrinking a class keeps a prefix (for herding,
exactly the herding selection of the smaller size). A class with fewer images than its share
keeps all of them. ``reservoir`` instead samples the whole stream with a fixed capacity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cilkit.buffers.selection import SELECTORS, reservoir_update
from cilkit.config.schema import MemoryConfig


class ExemplarMemory:
    """Stored exemplars as dataset indices, grouped by remapped class id.

    Args:
        cfg: the memory config (budget and selection strategy).
    """

    def __init__(self, cfg: MemoryConfig) -> None:
        self.cfg = cfg
        self.selector = SELECTORS.get(cfg.selection).obj
        self.per_class: dict[int, torch.Tensor] = {}
        self.num_stream_seen = 0  # reservoir: samples of the stream seen so far

    def quota(self, num_seen_classes: int) -> int:
        """Exemplars per class once ``num_seen_classes`` classes are known."""
        if self.cfg.memory_per_class is not None:
            return self.cfg.memory_per_class
        return self.cfg.memory_size // max(num_seen_classes, 1)

    def __len__(self) -> int:
        return sum(len(v) for v in self.per_class.values())

    def indices(self) -> torch.Tensor:
        """Every stored dataset index (CPU int64), grouped by class in class order."""
        if not self.per_class:
            return torch.empty(0, dtype=torch.long)
        return torch.cat([self.per_class[c] for c in sorted(self.per_class)])

    def counts(self) -> dict[int, int]:
        return {c: len(v) for c, v in sorted(self.per_class.items())}

    def update(
        self,
        new_classes: tuple[int, ...],
        num_seen_classes: int,
        class_indices: Callable[[int], torch.Tensor],
        features: Callable[[torch.Tensor], torch.Tensor] | None,
        targets: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        """Shrink the old classes to the new quota, then select exemplars of ``new_classes``.

        Args:
            new_classes: remapped ids of the classes just learned.
            num_seen_classes: classes seen so far, including ``new_classes``.
            class_indices: dataset positions of a class's training samples.
            features: feature extractor over dataset positions (for herding).
            targets: remapped labels of the whole training split (CPU), for reservoir.
            generator: CPU generator for random selection.
        """
        if not self.selector.per_class:
            new = torch.cat([class_indices(c) for c in new_classes])
            new = new[torch.randperm(len(new), generator=generator)]
            stored = self.indices()
            stored, self.num_stream_seen = reservoir_update(
                stored, self.num_stream_seen, new, self.cfg.memory_size, generator
            )
            labels = targets[stored]
            self.per_class = {int(c): stored[labels == c] for c in torch.unique(labels).tolist()}
            return
        m = self.quota(num_seen_classes)
        for c in list(self.per_class):
            self.per_class[c] = self.per_class[c][:m]
        for c in new_classes:
            idx = class_indices(c)
            k = min(m, len(idx))
            feats = features(idx) if self.selector.needs_features else len(idx)
            pos = self.selector(feats, k, generator)
            self.per_class[c] = idx[pos.cpu()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        classes = sorted(self.per_class)
        return {
            "classes": torch.tensor(classes, dtype=torch.long),
            "counts": torch.tensor([len(self.per_class[c]) for c in classes], dtype=torch.long),
            "indices": self.indices(),
            "num_stream_seen": torch.tensor(self.num_stream_seen, dtype=torch.long),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        parts = torch.split(state["indices"], state["counts"].tolist())
        self.per_class = {
            int(c): p.clone() for c, p in zip(state["classes"].tolist(), parts, strict=False)
        }
        self.num_stream_seen = int(state["num_stream_seen"])
