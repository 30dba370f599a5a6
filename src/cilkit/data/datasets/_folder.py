"""Image-folder machinery shared by ``imagefolder`` and the adapters of datasets distributed as
class folders (CUB-200, ImageNet-R, ImageNet-A, ObjectNet, OmniBenchmark, VTAB, ImageNet-100).

:func:`class_dirs` and :func:`scan` list a split's class folders and image files;
:func:`folder_splits` checks the folder against ``data.manifest`` (or hashes it) and turns the
lists into :class:`~cilkit.data.base.DatasetSplits`, decoded one of three ways:

- in memory (``data.in_memory``, or unset with ``data.image_size <= 64``): one ``uint8`` tensor,
  each image's shorter side resized to ``S`` and the centre square kept, cached as ``.npz``;
- memory-mapped (``data.cache``, see :func:`memmap_file`): decoded once (shorter side
  ``S * 256 / 224``, centre ``S x S`` crop) into one file under ``.cilkit_cache/``
  (:mod:`cilkit.data.memmap_cache`) and served as a tensor backed by that file;
- lazily: file paths, decoded with the same resize by DataLoader workers on every pass.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, ImageSet
from cilkit.data.datasets._common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    cache_path,
    fingerprint,
    handle_unreadable,
    int64_labels,
    is_image_file,
    load_cache,
    save_cache,
    uint8_images,
    writable_cache_dir,
)
from cilkit.data.lazy import decode_images
from cilkit.data.manifest import dataset_manifest
from cilkit.data.memmap_cache import cache_bytes, load_or_decode, read_cache
from cilkit.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

LAZY_SIZE = 224
"""Image size of a folder not held in memory when ``data.image_size`` is not set."""
IN_MEMORY_MAX_SIZE = 64
"""With ``data.in_memory`` unset, folders resized to at most this size are held in memory."""
MEMMAP_AUTO_MAX_BYTES = 16 * 2**30
"""``data.cache=auto`` memory-maps folders whose cache file takes at most this much."""
_MEMMAP_VERSION = "memmap/1"


@dataclass(frozen=True)
class Listing:
    """The image files of one split, in a fixed order.

    Attributes:
        folder: the split's folder (named in messages and provenance).
        paths: the image files.
        labels: the class id of each.
        sizes: the byte size of each (0 when it cannot be read).
    """

    folder: Path
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def class_dirs(split_dir: Path) -> list[str]:
    """The sorted names of the class folders in ``split_dir`` (hidden ones left out)."""
    try:
        return sorted(
            e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
        )
    except OSError as e:
        raise DatasetError(f"cannot list {split_dir} ({e.strerror or e})") from None


def file_size(path: str) -> int:
    """The byte size of ``path``, 0 when it cannot be read."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def scan(split_dir: Path, classes: Sequence[str]) -> Listing:
    """Image files under each class folder (recursively, sorted); class ``i`` is ``classes[i]``."""
    out = Listing(split_dir)
    for label, cls in enumerate(classes):
        found: list[tuple[str, int]] = []
        for dirpath, dirnames, filenames in os.walk(split_dir / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if is_image_file(name):
                    path = os.path.join(dirpath, name)
                    found.append((path, file_size(path)))
        found.sort()
        out.paths.extend(p for p, _ in found)
        out.sizes.extend(s for _, s in found)
        out.labels.extend([label] * len(found))
    return out


def split_classes(train_dir: Path, test_dir: Path) -> list[str]:
    """The class folders of ``train_dir``, which ``test_dir`` must share.

    Raises:
        DatasetError: ``train_dir`` has no class folder, or the two hold different ones.
    """
    classes = class_dirs(train_dir)
    if not classes:
        raise DatasetError(
            f"{train_dir} has no class folders (expected {train_dir.name}/<class>/<image>)"
        )
    test_classes = class_dirs(test_dir)
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
    return classes


def check_not_empty(train: Listing, test: Listing, classes: Sequence[str]) -> None:
    """Every class has a training image and the test split has some.

    Raises:
        DatasetError: naming the first empty class folder, or the empty test folder.
    """
    counts = np.bincount(np.asarray(train.labels, dtype=np.int64), minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DatasetError(
            f"{train.folder / empty[0]} holds no image files ({len(empty)} such classes)"
        )
    if not test.paths:
        raise DatasetError(f"{test.folder} holds no image files")


def in_memory(cfg: DataConfig) -> bool:
    """Whether ``cfg`` holds an image folder in memory (see ``DataConfig.in_memory``)."""
    if cfg.in_memory is None:
        return cfg.image_size is not None and cfg.image_size <= IN_MEMORY_MAX_SIZE
    if cfg.in_memory and cfg.image_size is None:
        raise ConfigError("data.image_size must be set when data.in_memory=true (image folders)")
    return cfg.in_memory


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def memmap_file(
    cfg: DataConfig, name: str, root: Path, key: str, n: int, size: int
) -> tuple[Path | None, str]:
    """Where the memory-mapped cache of a folder not held in memory goes, if it is used.

    ``data.cache=memmap`` always uses it; ``auto`` when ``data.in_memory`` is unset, the file
    takes at most :data:`MEMMAP_AUTO_MAX_BYTES` and the disk has room for it; ``none`` never.

    Returns:
        ``(file, "")``, or ``(None, why not)`` with the reason for the provenance line.

    Raises:
        DatasetError: ``memmap`` was asked for and cannot be written (no writable folder, too
            little free space).
    """
    if cfg.cache == "none":
        return None, "data.cache=none"
    if cfg.cache == "auto" and cfg.in_memory is not None:
        return None, "data.in_memory=false"
    folder = writable_cache_dir(root)
    if folder is None:
        if cfg.cache == "memmap":
            raise DatasetError(
                f"{name}: no writable cache folder for data.cache=memmap (tried "
                f"{root}/.cilkit_cache and the user's cache); set CILKIT_CACHE_DIR to a writable "
                "folder, or data.cache=none"
            )
        return None, "no writable cache folder"
    path = folder / f"{name}-{size}px-{key}.u8"
    if read_cache(path, n, size) is not None:
        return path, ""
    need = cache_bytes(n, size)
    if cfg.cache == "auto" and need > MEMMAP_AUTO_MAX_BYTES:
        return None, f"the memmap cache would take {_gb(need)}; set data.cache=memmap to use it"
    free = shutil.disk_usage(folder).free
    if free < need + need // 20 + 2**28:
        if cfg.cache == "memmap":
            raise DatasetError(
                f"{name}: the memmap cache {path} needs {_gb(need)} and {folder} has {_gb(free)} "
                "free; free some space, set CILKIT_CACHE_DIR, or set data.cache=none"
            )
        return None, f"the memmap cache would take {_gb(need)}, {_gb(free)} free in {folder}"
    return path, ""


def folder_splits(
    cfg: DataConfig,
    name: str,
    root: Path,
    names: Sequence[str],
    train: Listing,
    test: Listing,
    head: str,
    notes: Sequence[str] = (),
    log: logging.Logger | None = None,
) -> DatasetSplits:
    """Check ``root`` against ``cfg.manifest`` (or hash it) and decode the two splits.

    Args:
        cfg: data config (``image_size``, ``in_memory``, ``cache``, ``manifest``,
            ``on_unreadable``).
        name: the dataset's registry name (in messages and cache file names).
        root: the dataset folder (its manifest is checked or made; caches go under it).
        names: class names in class-id order.
        train: the training files.
        test: the test files.
        head: the start of the provenance line, naming what was read.
        notes: what to say of it in the parentheses that follow, before how it was decoded.
        log: where the warning about unreadable files goes (default: this module's logger).

    Returns:
        Train and test splits of ``(3, S, S)`` images, ``S = image_size`` (224 when unset and
        not in memory), with ``extra["manifest_sha256"]`` (and ``"manifest_file"``).
    """
    log = log or logger
    record = dataset_manifest(cfg, root)
    extra = {"manifest_sha256": record.sha256, "manifest_file": record.checked}
    what = f"{name} {root}"
    paths = train.paths + test.paths
    labels = np.asarray(train.labels + test.labels, dtype=np.int64)
    sizes = train.sizes + test.sizes
    n_train, size = len(train), cfg.image_size or LAZY_SIZE
    rel = [os.path.relpath(p, root) for p in paths]
    names = tuple(names)

    def splits(train_set: ImageSet, test_set: ImageSet, ok: np.ndarray, decoded: str):
        n_bad = int((~ok).sum())
        parts = (*notes, decoded, f"{n_bad} unreadable skipped" if n_bad else "")
        return DatasetSplits(
            name=name,
            train=train_set,
            test=test_set,
            preset="imagenet",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            root=root,
            extra=extra,
            provenance=f"{head} ({'; '.join(p for p in parts if p)})",
        )

    def held(images: np.ndarray | torch.Tensor, idx: np.ndarray) -> ImageSet:
        return ImageSet(int64_labels(labels[idx]), names, images)

    if in_memory(cfg):
        key = fingerprint(f"{name}/1", size, rel, [str(s) for s in sizes], [str(y) for y in labels])
        cache = cache_path(root, f"{name}-{size}px-{key}.npz")
        arrays = load_cache(cache, {"images": (len(paths), 3, size, size), "ok": (len(paths),)})
        errors: dict[int, str] = {}
        if arrays is not None:
            decoded = f"decoded at {size}px (centre crop), read from the cache {cache}"
        else:
            images, ok, errors = decode_images(paths, size, "crop")
            arrays = {"images": images, "ok": ok}
            cached = f"cached in {cache}" if save_cache(cache, arrays) else "not cached"
            decoded = f"decoded at {size}px (centre crop) from the image files, {cached}"
        keep = handle_unreadable(what, paths, arrays["ok"], errors, cfg.on_unreadable, root, log)
        tr, te = keep[keep < n_train], keep[keep >= n_train]
        images = arrays["images"]
        return splits(
            held(uint8_images(images[tr]), tr),
            held(uint8_images(images[te]), te),
            arrays["ok"],
            decoded,
        )

    key = fingerprint(_MEMMAP_VERSION, record.sha256, size, rel, [str(y) for y in labels])
    path, why = memmap_file(cfg, name, root, key, len(paths), size)
    if path is not None:
        try:
            found = load_or_decode(path, paths, size, "eval")
        except OSError as e:
            raise DatasetError(
                f"{name}: cannot write the memmap cache {path} ({e.strerror or e}); free some "
                "space, or set data.cache=none"
            ) from None
        errors = {i: "empty file" if sizes[i] == 0 else r for i, r in found.errors.items()}
        keep = handle_unreadable(what, paths, found.ok, errors, cfg.on_unreadable, root, log)
        k = int(found.ok[:n_train].sum())  # the kept rows of the training split come first
        tr, te = keep[keep < n_train], keep[keep >= n_train]
        how = f"decoded at {size}px (shorter side {round(size * 256 / 224)}, centre crop)"
        decoded = (
            f"{how}, read from the memory-mapped cache {path}"
            if found.from_cache
            else f"{how} from the image files into the memory-mapped cache {path}"
        )
        train_images = torch.from_numpy(found.images[:k])
        test_images = torch.from_numpy(found.images[k:])
        return splits(held(train_images, tr), held(test_images, te), found.ok, decoded)

    ok = np.asarray(sizes) > 0
    errors = {int(i): "empty file" for i in np.flatnonzero(~ok)}
    keep = handle_unreadable(what, paths, ok, errors, cfg.on_unreadable, root, log)
    k = int(np.searchsorted(keep, n_train))

    def lazy(idx: np.ndarray) -> ImageSet:
        return ImageSet(
            int64_labels(labels[idx]),
            names,
            paths=tuple(paths[i] for i in idx),
            image_shape=(3, size, size),
        )

    decoded = f"decoded lazily at {size}px by DataLoader workers on every pass, no cache ({why})"
    return splits(lazy(keep[:k]), lazy(keep[k:]), ok, decoded)
