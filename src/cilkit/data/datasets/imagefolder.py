"""Any ``train/<class>/<image>`` + ``val/<class>/<image>`` folder (ImageNet layout)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, ImageSet, register_dataset
from cilkit.data.datasets._common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    cache_path,
    fingerprint,
    handle_unreadable,
    int64_labels,
    is_image_file,
    load_cache,
    plural,
    resolve_root,
    save_cache,
    uint8_images,
)
from cilkit.data.lazy import decode_images
from cilkit.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

TEST_SPLITS = ("val", "test")
"""Names accepted for the second split folder, in order of preference."""
LAZY_SIZE = 224
"""Image size of a lazily decoded folder when ``data.image_size`` is not set."""
IN_MEMORY_MAX_SIZE = 64
"""With ``data.in_memory`` unset, folders resized to at most this size are held in memory."""
_CACHE_VERSION = "imagefolder/1"


def _class_dirs(split_dir: Path) -> list[str]:
    try:
        return sorted(
            e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
        )
    except OSError as e:
        raise DatasetError(f"cannot list {split_dir} ({e.strerror or e})") from None


def _scan(split_dir: Path, classes: list[str]) -> tuple[list[str], list[int], list[int]]:
    """Image files under each class folder (recursively, sorted), labels and byte sizes."""
    paths: list[str] = []
    labels: list[int] = []
    sizes: list[int] = []
    for label, cls in enumerate(classes):
        found: list[tuple[str, int]] = []
        for dirpath, dirnames, filenames in os.walk(split_dir / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if is_image_file(name):
                    path = os.path.join(dirpath, name)
                    try:
                        size = os.stat(path).st_size
                    except OSError:
                        size = 0
                    found.append((path, size))
        found.sort()
        paths.extend(p for p, _ in found)
        sizes.extend(s for _, s in found)
        labels.extend([label] * len(found))
    return paths, labels, sizes


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


def _in_memory(cfg: DataConfig) -> bool:
    if cfg.in_memory is None:
        return cfg.image_size is not None and cfg.image_size <= IN_MEMORY_MAX_SIZE
    if cfg.in_memory and cfg.image_size is None:
        raise ConfigError("data.image_size must be set when data.in_memory=true (image folders)")
    return cfg.in_memory


@register_dataset("imagefolder")
def load_imagefolder(cfg: DataConfig) -> DatasetSplits:
    """Any image folder in the ImageNet layout root/{train,val}/<class>/<image> (lazy or in memory).

    Class names are the sorted ``train`` subfolder names; ``val`` (or ``test``) must have the
    same class folders. Held in memory as one ``uint8`` tensor when ``cfg.in_memory`` is set, or
    when it is unset and ``cfg.image_size <= 64``: each image's shorter side is resized to
    ``image_size`` and the centre square kept (cached as ``.npz`` under ``root/.cilkit_cache/``).
    Otherwise the splits hold file paths, decoded by
    :class:`cilkit.data.lazy.FileImageDataset` at ``image_size`` (default 224). Unreadable files
    are skipped with one warning on this module's logger or stop the load, as
    ``cfg.on_unreadable`` says; in lazy mode only empty files are detected at load time (the
    others become zero images, reported by the engine once per pass). ``provenance`` names the
    folder, the number of files per split and whether the decode cache was used.

    Args:
        cfg: data config (``root``, ``image_size``, ``in_memory``, ``on_unreadable``).

    Returns:
        Train and test splits of ``(3, S, S)`` images.
    """
    root = resolve_root(cfg)
    train_dir, test_dir = _locate(root)
    classes = _class_dirs(train_dir)
    if not classes:
        raise DatasetError(f"{train_dir} has no class folders (expected train/<class>/<image>)")
    test_classes = _class_dirs(test_dir)
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        detail = "; ".join(
            part
            for part in (
                f"only in {train_dir.name}: {', '.join(only_train[:5])}" if only_train else "",
                f"only in {test_dir.name}: {', '.join(only_test[:5])}" if only_test else "",
            )
            if part
        )
        raise DatasetError(
            f"{test_dir} and {train_dir} must hold the same class folders ({detail})"
        )
    names = tuple(classes)
    train_paths, train_labels, train_sizes = _scan(train_dir, classes)
    test_paths, test_labels, test_sizes = _scan(test_dir, classes)
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DatasetError(
            f"{train_dir / empty[0]} holds no image files ({len(empty)} such classes)"
        )
    if not test_paths:
        raise DatasetError(f"{test_dir} holds no image files")
    what = f"imagefolder {root}"
    paths = train_paths + test_paths
    n_train = len(train_paths)
    size = cfg.image_size or LAZY_SIZE

    def provenance(ok: np.ndarray, decoded: str) -> str:
        n_bad = int((~ok).sum())
        notes = (
            f"{plural(len(classes), 'class')}; {plural(n_train, 'image file')} in "
            f"{train_dir.name}, {plural(len(test_paths), 'image file')} in {test_dir.name}",
            decoded,
            f"{n_bad} unreadable skipped" if n_bad else "",
        )
        return f"{root}/{{{train_dir.name}, {test_dir.name}}} ({'; '.join(n for n in notes if n)})"

    if not _in_memory(cfg):
        ok = np.asarray(train_sizes + test_sizes) > 0
        errors = {int(i): "empty file" for i in np.flatnonzero(~ok)}
        keep = handle_unreadable(what, paths, ok, errors, cfg.on_unreadable, root, logger)
        kept_paths = [paths[i] for i in keep]
        labels = train_labels + test_labels
        kept_labels = [labels[i] for i in keep]
        k = int(np.searchsorted(keep, n_train))

        def lazy(sl: slice) -> ImageSet:
            return ImageSet(
                int64_labels(kept_labels[sl]),
                names,
                paths=tuple(kept_paths[sl]),
                image_shape=(3, size, size),
            )

        return DatasetSplits(
            name="imagefolder",
            train=lazy(slice(0, k)),
            test=lazy(slice(k, None)),
            preset="imagenet",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            root=root,
            provenance=provenance(
                ok, f"decoded lazily at {size}px by DataLoader workers on every pass, no cache"
            ),
        )

    key = fingerprint(
        _CACHE_VERSION,
        size,
        [os.path.relpath(p, root) for p in paths],
        [str(s) for s in train_sizes + test_sizes],
    )
    cache = cache_path(root, f"imagefolder-{size}px-{key}.npz")
    n = len(paths)
    arrays = load_cache(cache, {"images": (n, 3, size, size), "ok": (n,)})
    errors: dict[int, str] = {}
    if arrays is not None:
        decoded = f"decoded at {size}px (centre crop), read from the cache {cache}"
    else:
        images, ok, errors = decode_images(paths, size, "crop")
        arrays = {"images": images, "ok": ok}
        cached = f"cached in {cache}" if save_cache(cache, arrays) else "not cached"
        decoded = f"decoded at {size}px (centre crop) from the image files, {cached}"
    keep = handle_unreadable(what, paths, arrays["ok"], errors, cfg.on_unreadable, root, logger)
    labels = np.asarray(train_labels + test_labels, dtype=np.int64)
    train_keep, test_keep = keep[keep < n_train], keep[keep >= n_train]

    def in_memory(idx: np.ndarray) -> ImageSet:
        return ImageSet(int64_labels(labels[idx]), names, uint8_images(arrays["images"][idx]))

    return DatasetSplits(
        name="imagefolder",
        train=in_memory(train_keep),
        test=in_memory(test_keep),
        preset="imagenet",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        root=root,
        provenance=provenance(arrays["ok"], decoded),
    )
