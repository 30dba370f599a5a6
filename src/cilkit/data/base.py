"""Dataset adapters return :class:`DatasetSplits`: images, labels and class names per split.

Small images (digits, MNIST-like, CIFAR, Tiny-ImageNet) are held as one ``uint8`` tensor of shape
``(N, C, H, W)`` so the engine can move the whole split to the training device once and augment
batches there. Large image folders keep file paths instead and are decoded in worker processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cilkit.config.schema import DataConfig
from cilkit.registry import Registry


@dataclass(frozen=True, eq=False)
class ImageSet:
    """One split of a dataset.

    Attributes:
        labels: int64 tensor ``(N,)`` of original class ids in ``[0, len(class_names))``.
        class_names: human-readable name of each class id.
        images: uint8 tensor ``(N, C, H, W)`` when the split is held in memory, else ``None``.
        paths: image file paths when the split is decoded lazily, else ``None``.
        image_shape: ``(C, H, W)`` of every image the engine will see.
    """

    labels: torch.Tensor
    class_names: tuple[str, ...]
    images: torch.Tensor | None = None
    paths: tuple[str, ...] | None = None
    image_shape: tuple[int, int, int] = (3, 32, 32)

    def __post_init__(self) -> None:
        if (self.images is None) == (self.paths is None):
            raise ValueError("an ImageSet holds either images or paths, not both or neither")
        n = len(self.images) if self.images is not None else len(self.paths or ())
        if len(self.labels) != n:
            raise ValueError(f"{n} images but {len(self.labels)} labels")
        if self.images is not None:
            if self.images.dtype != torch.uint8 or self.images.ndim != 4:
                raise ValueError("in-memory images must be a uint8 tensor (N, C, H, W)")
            object.__setattr__(self, "image_shape", tuple(self.images.shape[1:]))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def class_counts(self) -> torch.Tensor:
        """Number of images of each original class id."""
        return torch.bincount(self.labels, minlength=self.num_classes)


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A dataset's train and test splits plus the augmentation preset that suits it.

    Attributes:
        name: registry name of the dataset.
        train: training split.
        test: test split (the official validation split where there is no test split).
        preset: name of the augmentation preset in :mod:`cilkit.data.transforms`.
        mean: per-channel mean of pixel values in [0, 1], used for normalisation.
        std: per-channel standard deviation in [0, 1].
        root: where the files were read from (``None`` for bundled data).
        extra: dataset-specific additions (e.g. CIFAR-100's coarse labels).
        provenance: one human-readable line saying exactly what was read: the folder and
            files, their MD5 against the official files where one is known, whether a decode
            cache was used, and where the files were found when that is not under
            ``data.root``. Runs print it in their header and ``log.txt`` as ``data: ...``.
    """

    name: str
    train: ImageSet
    test: ImageSet
    preset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    root: Path | None = None
    extra: dict = field(default_factory=dict)
    provenance: str = ""

    def __post_init__(self) -> None:
        if self.train.class_names != self.test.class_names:
            raise ValueError("train and test splits must share class names")

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


DatasetLoader = Callable[[DataConfig], DatasetSplits]
DATASETS: Registry[DatasetLoader] = Registry("dataset")
register_dataset = DATASETS.register


def create_dataset(cfg: DataConfig) -> DatasetSplits:
    """Load the dataset named ``cfg.name`` from ``cfg.root``."""
    return DATASETS.get(cfg.name).obj(cfg)
