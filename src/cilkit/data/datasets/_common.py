"""Helpers shared by the dataset adapters: roots, tensors and the ``.npz`` decode cache."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from cilkit.config.schema import DataConfig
from cilkit.data.download import check_md5, download_url, extract_archive
from cilkit.data.lazy import unreadable_message
from cilkit.errors import DatasetError

logger = logging.getLogger(__name__)

CACHE_DIR = ".cilkit_cache"
"""Folder under ``data.root`` where decoded images are cached."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Found(NamedTuple):
    """Where :func:`find_or_fetch` found a dataset, and how it got there."""

    folder: Path | None
    """The dataset folder, or None when it is not there."""
    note: str
    """``""`` when it was there already; else which archive was extracted (for provenance)."""


def find_or_fetch(
    root: Path, find: Callable[[], Path | None], url: str, md5: str, download: bool
) -> Found:
    """``find()``, else extract ``root/<archive>`` (MD5-checked) or, with ``download``, fetch it
    from ``url`` and extract it, then ``find()`` again."""
    folder = find()
    if folder is not None:
        return Found(folder, "")
    archive = root / url.rsplit("/", 1)[-1]
    if archive.is_file():
        check_md5(archive, md5)
        note = f"extracted from {archive}, whose MD5 matches the official archive"
    elif download:
        download_url(url, archive, md5=md5)
        note = (
            f"downloaded from {url} to {archive} (MD5 matches the official archive) and extracted"
        )
    else:
        return Found(None, "")
    extract_archive(archive, root)
    return Found(find(), note)


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


USER_CACHE_ENV = "CILKIT_CACHE_DIR"
"""Environment variable naming the cache folder used when a dataset folder is read-only."""


def user_cache_root() -> Path:
    """``$CILKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/cilkit``, else ``~/.cache/cilkit``."""
    if os.environ.get(USER_CACHE_ENV):
        return Path(os.environ[USER_CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "cilkit"


def writable_cache_dir(root: Path) -> Path | None:
    """A cache folder that can be written for the dataset folder ``root``.

    ``root/.cilkit_cache`` when it can be written, else a folder of its own under
    :func:`user_cache_root` (named after ``root`` and a hash of its path), created as needed.

    Returns:
        The folder, or None when neither can be written.
    """
    own = user_cache_root() / f"{root.name or 'root'}-{fingerprint(str(root))[:12]}"
    for folder in (root / CACHE_DIR, own):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
            return folder
    return None


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
    base: Path | None = None,
    log: logging.Logger | None = None,
) -> np.ndarray:
    """Apply ``data.on_unreadable`` to the files that failed to decode.

    Args:
        what: dataset and folder, for the messages (e.g. ``"imagefolder /data/x"``).
        paths: the decoded files.
        ok: boolean mask of the files that decoded.
        errors: ``{index: reason}`` of the others (may be empty, e.g. from a cache).
        on_unreadable: ``"error"`` stops at the first failure; ``"skip"`` drops them and logs
            one warning with the count and the first few paths.
        base: folder the paths in the warning are shown relative to.
        log: the logger of the warning (default: this module's, under ``cilkit``).

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
        message = unreadable_message(what, "skipped", [paths[i] for i in bad], reason, base)
        (log or logger).warning("%s", message)
    return np.flatnonzero(ok)


# ---- provenance: one line saying exactly what was read --------------------------------------


@dataclass(frozen=True)
class Md5Check:
    """The MD5 of one file that was read, against the official one where it is known.

    Attributes:
        name: the file name, as shown.
        md5: its MD5.
        official: the official file's MD5, or None when none is known.
        data_matches: a compressed file whose bytes differ from the official download but whose
            decompressed data has the official MD5 (its gzip wrapper was rewritten, e.g. by a
            distribution package).
    """

    name: str
    md5: str
    official: str | None = None
    data_matches: bool = False

    @property
    def matches(self) -> bool:
        return self.official is not None and self.md5 == self.official.lower()


_COUNT_WORDS = {
    2: "both",
    3: "all three",
    4: "all four",
    5: "all five",
    6: "all six",
    7: "all seven",
}


def _all(n: int) -> str:
    return _COUNT_WORDS.get(n, f"all {n}")


def md5_note(checks: Sequence[Md5Check]) -> str:
    """What the MD5s of the files read say, in a few words.

    Returns:
        E.g. ``"MD5 of all four match the official files"``, ``"MD5 differs from the official
        file: test_batch (MD5 0123...)"`` (a mismatch is reported, never an error) or
        ``"MD5 not checked: meta (no official MD5 known)"``.
    """
    n = len(checks)
    exact = [c for c in checks if c.matches]
    data = [c for c in checks if not c.matches and c.data_matches]
    unknown = [c for c in checks if c.official is None]
    differ = [c for c in checks if c.official is not None and not c.matches and not c.data_matches]
    if n and len(exact) == n:
        return (
            "MD5 matches the official file"
            if n == 1
            else f"MD5 of {_all(n)} match the official files"
        )
    if n and len(data) == n:
        if n == 1:
            return (
                "MD5 matches the official file once decompressed; the compressed file itself "
                "differs from the official download"
            )
        return (
            f"MD5 of {_all(n)} match the official files once decompressed; the compressed files "
            "themselves differ from the official downloads"
        )
    parts = []
    if exact:
        parts.append(f"MD5 matches the official file: {', '.join(c.name for c in exact)}")
    if data:
        names = ", ".join(c.name for c in data)
        parts.append(f"MD5 matches the official file once decompressed: {names}")
    if differ:
        files = ", ".join(f"{c.name} (MD5 {c.md5})" for c in differ)
        parts.append(f"MD5 differs from the official file: {files}")
    if unknown:
        names = ", ".join(c.name for c in unknown)
        parts.append(f"MD5 not checked: {names} (no official MD5 known)")
    return "; ".join(parts)


def file_list(folder: Path, names: Sequence[str]) -> str:
    """``folder/{a, b, c}`` (``folder/a`` for one file)."""
    if len(names) == 1:
        return str(folder / names[0])
    return f"{folder}/{{{', '.join(names)}}}"


def root_note(cfg: DataConfig, root: Path) -> str:
    """``data.root 'data' (/abs/data)`` as the user wrote it, resolved when that differs."""
    given = str(cfg.root)
    return f"data.root '{given}'" + ("" if given == str(root) else f" ({root})")


def plural(n: int, what: str) -> str:
    """``"1 image"``, ``"50,000 images"``, ``"3 classes"``: a count and its noun."""
    if n == 1:
        return f"1 {what}"
    return f"{n:,} {what}{'es' if what.endswith(('s', 'x', 'ch', 'sh')) else 's'}"
