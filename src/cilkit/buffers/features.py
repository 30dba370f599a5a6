"""Features of a split's samples under the network's current weights, each computed once.

After a task, several steps ask for the features of the same training images under the same
weights: herding (every image of the new classes), the class means (every exemplar, of which
the new classes' were just herded from), and a method's own uses (LUCIR's and PODNet's
imprinting, ProtoLTCIL's prototypes). :class:`FeatureCache` computes each image's features
once per flip while the feature extractor's parameters and buffers hold the same values, and
starts over when anything changed them: training, a stage, a loaded checkpoint, a broadcast
from rank 0, an added branch. The test is on the values themselves (see :func:`fingerprint`),
so no code path that writes weights can leave stale features behind.

The cache is not state of the run: it is never saved, and a resumed run recomputes what it
needs. Eval-mode features do not depend on which other images share a batch, so cached and
recomputed features agree up to the rounding of a different batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from cilkit.engine.data import DeviceSplit


def extractor_tensors(network: nn.Module) -> list[torch.Tensor]:
    """The parameters and buffers ``network.forward_features`` may read: all of the network's
    except its classifier heads (``network.head``, ``network.heads``), which only turn features
    into logits. A head the features depend on would only make the cache start over more
    often, never serve stale features, because everything else is included."""
    skip: set[int] = set()
    for name in ("head", "heads"):
        module = getattr(network, name, None)
        if isinstance(module, nn.Module):
            skip.update(id(t) for t in module.parameters())
            skip.update(id(t) for t in module.buffers())
    tensors = [*network.parameters(), *network.buffers()]
    return [t for t in tensors if id(t) not in skip]


@torch.no_grad()
def fingerprint(tensors: Iterable[torch.Tensor]) -> tuple[tuple, torch.Tensor]:
    """A key that changes when any of ``tensors`` changes: their shapes, and per tensor the
    float64 sum of its values and of its values weighted by their position (one host
    synchronisation for all of them). Two different weight sets with equal keys would need
    both sums of every tensor to agree exactly, which training does not produce."""
    tensors = list(tensors)
    shapes = tuple((tuple(t.shape), t.dtype) for t in tensors)
    sums = []
    for t in tensors:
        flat = t.detach().reshape(-1).to(torch.float64)
        ramp = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        sums.append(torch.stack([flat.sum(), torch.dot(flat, ramp)]))
    values = torch.stack(sums).cpu() if sums else torch.empty(0, 2, dtype=torch.float64)
    return shapes, values


class FeatureCache:
    """Features of samples of one split, by dataset position, for one state of the extractor.

    ``get`` returns the features of ``indices`` (in their order), computing only those not
    computed before under the same split, extractor function, flip and extractor values.
    """

    def __init__(self) -> None:
        self._split: DeviceSplit | None = None
        self._fn: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._key: tuple[tuple, torch.Tensor] | None = None
        self._amp: torch.dtype | None = None
        self._rows: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}  # flip -> (slot, feats)
        self.computed = 0  # samples whose features were computed (tests and profiles read it)

    def clear(self) -> None:
        """Forget every cached feature (``computed`` keeps counting)."""
        self._split = self._fn = self._key = self._amp = None
        self._rows = {}

    def get(
        self,
        split: DeviceSplit,
        network: nn.Module,
        fn: Callable[[torch.Tensor], torch.Tensor],
        indices: torch.Tensor,
        batch_size: int,
        flip: bool = False,
        amp: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``fn``'s features ``(len(indices), d)`` of the samples at ``indices`` of ``split``.

        Args:
            split: the split the indices point into.
            network: the module whose extractor tensors ``fn`` reads (see
                :func:`extractor_tensors`).
            fn: the feature extractor, called on batches of normalised images.
            indices: dataset positions (any device, int64).
            batch_size: images per forward pass for the samples not cached yet.
            flip: features of the horizontally flipped images.
            amp: autocast dtype of the forward passes (the run's ``engine.amp``), None for full
                precision; the features are returned in fp32 either way.
        """
        key = fingerprint(extractor_tensors(network))
        # a bound method is a new object at every access: compare with ==, not is
        fresh = self._split is not split or self._fn != fn or self._amp != amp
        if fresh or not _same(self._key, key):
            self._split, self._fn, self._key, self._amp, self._rows = split, fn, key, amp, {}
        positions = indices.detach().to("cpu", torch.long).reshape(-1)
        slot, feats = self._rows.get(flip, (None, None))
        if slot is None:
            slot = torch.full((len(split),), -1, dtype=torch.long)
        missing = torch.unique(positions[slot[positions] < 0])
        if missing.numel():
            new = split.embed(missing, fn, batch_size, flip=flip, amp=amp)
            start = 0 if feats is None else len(feats)
            slot[missing] = torch.arange(start, start + len(new))
            feats = new if feats is None else torch.cat([feats, new])
            self.computed += int(missing.numel())
        self._rows[flip] = (slot, feats)
        if feats is None:  # no indices asked for and nothing cached
            return split.embed(positions, fn, batch_size, flip=flip, amp=amp)
        return feats[slot[positions].to(feats.device)]


def _same(a: tuple[tuple, torch.Tensor] | None, b: tuple[tuple, torch.Tensor]) -> bool:
    return a is not None and a[0] == b[0] and torch.equal(a[1], b[1])
