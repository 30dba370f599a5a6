"""Any ``train/<class>/<image>`` + ``val/<class>/<image>`` folder (ImageNet layout)."""

from __future__ import annotations

import logging
from pathlib import Path

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, register_dataset
from cilkit.data.datasets._common import plural, resolve_root
from cilkit.data.datasets._folder import (
    IN_MEMORY_MAX_SIZE,
    LAZY_SIZE,
    check_not_empty,
    folder_splits,
    scan,
    split_classes,
)
from cilkit.errors import DatasetError

logger = logging.getLogger(__name__)

TEST_SPLITS = ("val", "test")
"""Names accepted for the second split folder, in order of preference."""
__all__ = ["IN_MEMORY_MAX_SIZE", "LAZY_SIZE", "TEST_SPLITS", "load_imagefolder"]


def _locate(root: Path) -> tuple[Path, Path]:
    train = root / "train"
    test = next((root / s for s in TEST_SPLITS if (root / s).is_dir()), None)
    if train.is_dir() and test is not None:
        return train, test
    missing = str(train) if not train.is_dir() else " or ".join(str(root / s) for s in TEST_SPLITS)
    raise DatasetError(
        f"image folder not found: {missing} does not exist; set data.root to a folder holding "
        "train/<class>/<image> and val/<class>/<image> (ImageNet: move the validation images "
        "into val/<wnid>/ folders)"
    )


@register_dataset("imagefolder")
def load_imagefolder(cfg: DataConfig) -> DatasetSplits:
    """Any image folder in the ImageNet layout root/{train,val}/<class>/<image> (any size).

    Class names are the sorted ``train`` subfolder names; ``val`` (or ``test``) must have the
    same class folders. Held in memory as one ``uint8`` tensor when ``cfg.in_memory`` is set, or
    when it is unset and ``cfg.image_size <= 64``: each image's shorter side is resized to
    ``image_size`` and the centre square kept (cached as ``.npz`` under ``root/.cilkit_cache/``).
    Otherwise, at ``image_size`` (default 224) with the evaluation resize (shorter side
    ``S * 256 / 224``, centre crop): decoded once into a memory-mapped cache file when
    ``cfg.cache`` says so (see :func:`cilkit.data.datasets._folder.memmap_file`), else kept as
    file paths decoded by :class:`cilkit.data.lazy.FileImageDataset` on every pass. The folder
    is checked against ``cfg.manifest`` first, or hashed (``extra["manifest_sha256"]``).
    Unreadable files are skipped with one warning on this module's logger or stop the load, as
    ``cfg.on_unreadable`` says; when decoding lazily only empty files are detected at load time
    (the others become zero images, reported by the engine once per pass). ``provenance`` names
    the folder, the number of files per split and how they were decoded and cached.

    Args:
        cfg: data config (``root``, ``image_size``, ``in_memory``, ``cache``, ``manifest``,
            ``on_unreadable``).

    Returns:
        Train and test splits of ``(3, S, S)`` images.
    """
    root = resolve_root(cfg)
    train_dir, test_dir = _locate(root)
    classes = split_classes(train_dir, test_dir)
    train, test = scan(train_dir, classes), scan(test_dir, classes)
    check_not_empty(train, test, classes)
    counts = (
        f"{plural(len(classes), 'class')}; {plural(len(train), 'image file')} in "
        f"{train_dir.name}, {plural(len(test), 'image file')} in {test_dir.name}"
    )
    return folder_splits(
        cfg,
        "imagefolder",
        root,
        classes,
        train,
        test,
        head=f"{root}/{{{train_dir.name}, {test_dir.name}}}",
        notes=(counts,),
        log=logger,
    )
