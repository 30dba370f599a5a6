"""Helpers shared by the dataset adapters: roots, tensors and the ``.npz`` decode cache."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from cilkit.config.schema import DataConfig
from cilkit.data.download import check_md5, download_url, extract_archive
from cilkit.errors import DatasetError

logger = logging.getLogger(__name__)

CACHE_DIR = ".cilkit_cache"
"""Folder under ``data.root`` where decoded images are cached."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_or_fetch(
    root: Path, find: Callable[[], Path | None], url: str, md5: str, download: bool
) -> Path | None:
    """``find()``, else extract ``root/<archive>`` (MD5-checked) or, with ``download``, fetch it
    from ``url`` and extract it, then ``find()`` again."""
    folder = find()
    if folder is not None:
        return folder
    archive = root / url.rsplit("/", 1)[-1]
    if archive.is_file():
        check_md5(archive, md5)
    elif download:
        download_url(url, archive, md5=md5)
    else:
        return None
    extract_archive(archive, root)
    return find()


def resolve_root(cfg: DataConfig) -> Path:
    """``cfg.root`` as an absolute path (``~`` expanded), for reading and for messages."""
    return Path(cfg.root).expanduser().resolve()


def uint8_images(array: np.ndarray) -> torch.Tensor:
    """A contiguous ``uint8`` tensor (sharing memory with ``array`` when it can)."""
    out = np.ascontiguousarray(array, dtype=np.uint8)
    if not out.flags.writeable:
        out = out.copy()
    return torch.from_numpy(out)


def int64_labels(labels: Iterable[int] | np.ndarray) -> torch.Tensor:
    """An ``int64`` tensor of class ids."""
    return torch.as_tensor(np.asarray(labels, dtype=np.int64))


def fingerprint(*parts: str | int | Iterable[str]) -> str:
    """A short stable hash of strings, integers and lists of strings (a cache key)."""
    h = hashlib.sha1(usedforsecurity=False)
    for part in parts:
        if isinstance(part, str | int):
            h.update(f"{part}\x1e".encode())
        else:
            for item in part:
                h.update(item.encode("utf-8", "surrogateescape"))
                h.update(b"\x1f")
            h.update(b"\x1e")
    return h.hexdigest()[:20]


def cache_path(root: Path, name: str) -> Path:
    """Where the cache file ``name`` lives under ``root``."""
    return root / CACHE_DIR / name


def load_cache(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray] | None:
    """Read a cache written by :func:`save_cache`, or None when it is absent or does not fit.

    Args:
        path: the ``.npz`` file.
        shapes: the arrays expected, with their exact shapes.

    Returns:
        The arrays, or None when the file is missing, unreadable or holds other shapes.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in shapes}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        logger.warning("ignoring unreadable cache %s (%s)", path, e)
        return None
    if any(arrays[k].shape != tuple(s) for k, s in shapes.items()):
        logger.warning("ignoring stale cache %s", path)
        return None
    logger.info("loaded decoded images from cache %s", path)
    return arrays


def save_cache(path: Path, arrays: Mapping[str, np.ndarray]) -> bool:
    """Write ``arrays`` to the ``.npz`` file ``path`` atomically; skip quietly when unwritable.

    Returns:
        Whether the cache was written.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        logger.info("not caching decoded images at %s (%s)", path, e.strerror or e)
        return False
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return True


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File name endings (lower case) taken as images in folders."""


def is_image_file(name: str) -> bool:
    """Whether a file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def handle_unreadable(
    what: str,
    paths: list[str],
    ok: np.ndarray,
    errors: Mapping[int, str],
    on_unreadable: str,
) -> np.ndarray:
    """Apply ``data.on_unreadable`` to the files that failed to decode.

    Args:
        what: dataset and folder, for the messages.
        paths: the decoded files.
        ok: boolean mask of the files that decoded.
        errors: ``{index: reason}`` of the others (may be empty, e.g. from a cache).
        on_unreadable: ``"error"`` stops at the first failure; ``"skip"`` warns once with the
            count and drops them.

    Returns:
        The indices of the files to keep.

    Raises:
        DatasetError: some file failed and ``on_unreadable`` is ``"error"``.
    """
    bad = np.flatnonzero(~ok)
    if len(bad):
        first = int(bad[0])
        reason = errors.get(first, "cannot be decoded")
        if on_unreadable == "error":
            raise DatasetError(
                f"{what}: unreadable image {paths[first]} ({reason}); remove or replace it, or "
                "set data.on_unreadable=skip"
            )
        warnings.warn(
            f"{what}: skipped {len(bad)} unreadable image file(s), e.g. {paths[first]} ({reason})",
            UserWarning,
            stacklevel=3,
        )
    return np.flatnonzero(ok)
