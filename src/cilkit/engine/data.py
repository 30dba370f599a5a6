"""The on-device data path: a split as one uint8 tensor on the training device, batched.

Training batches are index permutations drawn from a CPU generator (saveable, so a resumed run
draws the same batches), gathered on the device and augmented there by :class:`BatchTransform`.
Splits kept as files (large image folders) are decoded by DataLoader workers and then take the
same device-side path. Under torchrun each process takes its shard of every global batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import torch

from cilkit.contract import Batch
from cilkit.data.base import ImageSet
from cilkit.data.transforms import BatchTransform
from cilkit.engine.runtime import autocast
from cilkit.errors import DatasetError

logger = logging.getLogger(__name__)


class DeviceSplit:
    """A dataset split prepared for the engine: images, remapped targets and batching.

    Args:
        split: the images (in memory or as files).
        targets: remapped labels of every sample of the split (CPU int64).
        transform: normalisation and training augmentation.
        device: the training device.
        num_workers: decoding workers for file-based splits.
        rank: this process's rank under torchrun.
        world_size: number of processes.
        on_unreadable: files that cannot be decoded: "skip" (zero image, logged) or "error".
    """

    def __init__(
        self,
        split: ImageSet,
        targets: torch.Tensor,
        transform: BatchTransform,
        device: torch.device,
        num_workers: int = 4,
        rank: int = 0,
        world_size: int = 1,
        on_unreadable: str = "error",
    ) -> None:
        self.split = split
        self.transform = transform
        self.device = device
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        self.targets_cpu = targets
        self.targets = targets.to(device)
        self.images = split.images.to(device) if split.images is not None else None
        self.on_unreadable = on_unreadable
        self._file_dataset = None
        self._reported: set[int] = set()
        self._folder: str | None = None

    def __len__(self) -> int:
        return len(self.targets_cpu)

    def indices_of(self, classes: torch.Tensor | list[int] | tuple[int, ...]) -> torch.Tensor:
        """Sorted CPU positions of the samples whose remapped class is in ``classes``."""
        classes = torch.as_tensor(classes, dtype=torch.long)
        return torch.nonzero(torch.isin(self.targets_cpu, classes)).flatten()

    def _uint8_batches(
        self, chunks: list[torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images on the device, CPU positions) for each chunk of positions.

        File-backed splits are decoded by DataLoader workers. Files replaced by zero images
        (``on_unreadable="skip"``) are reported here, in this process: one warning on the
        ``cilkit.engine.data`` logger at the end of the pass, with the count and the first few
        paths of the files not reported before by this split.
        """
        if self.images is not None:
            for chunk in chunks:
                yield self.images[chunk.to(self.device, non_blocking=True)], chunk
            return
        from cilkit.data.lazy import FileImageDataset

        if self._file_dataset is None:
            self._file_dataset = FileImageDataset.from_image_set(self.split, self.on_unreadable)
        loader = torch.utils.data.DataLoader(
            self._file_dataset,
            batch_sampler=[c.tolist() for c in chunks],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        failed: dict[int, str] = {}
        try:
            for images, index, errors in loader:
                for i, reason in zip(index.tolist(), errors, strict=True):
                    if reason and i not in self._reported:
                        failed.setdefault(i, reason)
                yield images.to(self.device, non_blocking=True), index
        except DatasetError as err:  # re-raised from a worker with its traceback: keep one line
            last = [line for line in str(err).splitlines() if line.strip()][-1]
            raise DatasetError(last.split("DatasetError: ", 1)[-1]) from None
        finally:
            if failed:
                self._report_unreadable(failed)

    def _report_unreadable(self, failed: dict[int, str]) -> None:
        """Log once the files of this pass that were replaced by zero images."""
        from cilkit.data.lazy import unreadable_message

        self._reported.update(failed)
        paths = self.split.paths or ()
        order = sorted(failed)
        bad = [paths[i] for i in order]
        if self._folder is None:  # the split's folder, named in the message
            try:
                many = len(paths) > 1
                self._folder = os.path.commonpath(paths) if many else os.path.dirname(bad[0])
            except ValueError:  # mixed absolute and relative paths
                self._folder = ""
        folder = self._folder
        message = unreadable_message(
            f"decoding {folder or 'image files'}",
            "replaced {} by zero images (data.on_unreadable=skip)",
            bad,
            failed[order[0]],
            base=folder or None,
        )
        logger.warning("%s", message)

    def _shard(self, chunk: torch.Tensor) -> torch.Tensor:
        return chunk[self.rank :: self.world_size] if self.world_size > 1 else chunk

    def train_batches(
        self,
        indices: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        aug_generator: torch.Generator | None = None,
        sampler: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        raw: bool = False,
        views: int = 1,
        augment: bool = True,
    ) -> Iterator[Batch]:
        """Shuffled (or resampled), augmented batches over ``indices`` (one epoch).

        ``sampler`` maps the samples' labels to the epoch's positions into ``indices``
        (default: a random permutation). ``batch_size`` is global: each process takes its share
        of every batch. A last batch that would give a process fewer than 2 samples is dropped,
        so every process steps together and batch normalisation has a batch to normalise.
        ``raw`` adds the un-augmented uint8 images (``batch.raw``); ``views`` > 1 adds that many
        minus one further augmented views (``batch.views``).
        ``augment=False`` normalises the images as evaluation does, without augmentation (the
        order is still shuffled or sampled).
        """
        if sampler is None:
            order = indices[torch.randperm(len(indices), generator=generator)]
        else:
            order = indices[sampler(self.targets_cpu[indices], generator)]
        chunks = [
            self._shard(order[start : start + batch_size])
            for start in range(0, len(order), batch_size)
            if len(order) - start >= 2 * self.world_size
        ]
        for images, chunk in self._uint8_batches(chunks):
            x = (
                self.transform.train(images, aug_generator)
                if augment
                else self.transform.eval(images)
            )
            extra = tuple(self.transform.train(images, aug_generator) for _ in range(views - 1))
            target = self.targets[chunk.to(self.device)]
            yield Batch(x, target, chunk, images if raw else None, extra)

    def augmented(self, indices: torch.Tensor, generator: torch.Generator | None) -> Batch:
        """The samples at ``indices`` as one augmented training batch, in the given order and
        not sharded (a replay batch drawn from a learner's buffer)."""
        chunk = indices.detach().to("cpu", torch.long)
        ((images, _),) = list(self._uint8_batches([chunk]))
        x = self.transform.train(images, generator)
        return Batch(x, self.targets[chunk.to(self.device)], chunk)

    def eval_batches(
        self, indices: torch.Tensor, batch_size: int, flip: bool = False
    ) -> Iterator[Batch]:
        """Batches in order, normalised, not augmented (all samples, on every process)."""
        chunks = list(torch.split(indices, batch_size))
        for images, chunk in self._uint8_batches(chunks):
            x = self.transform.eval(images, flip=flip)
            yield Batch(x, self.targets[chunk.to(self.device)], chunk)

    @torch.no_grad()
    def embed(
        self,
        indices: torch.Tensor,
        fn: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int = 512,
        flip: bool = False,
        amp: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``fn`` (e.g. the feature extractor) over the samples at ``indices``, concatenated, in
        fp32; ``fn`` runs under autocast to ``amp`` when given (the run's ``engine.amp``)."""
        with autocast(self.device, amp):
            outs = [fn(b.x).float() for b in self.eval_batches(indices, batch_size, flip=flip)]
        if not outs:
            return torch.empty(0, device=self.device)
        return torch.cat(outs)
