"""The decoded-once cache of an image folder: every image at the model's resolution in one file.

The images are decoded once (shorter side resized to ``S * 256 / 224``, centre ``S x S`` crop,
as :class:`~cilkit.data.lazy.FileImageDataset` does on every pass) and written, in order, into
one file that is then memory-mapped: the split is served as a ``uint8`` tensor ``(N, 3, S, S)``
backed by the file, so later epochs and later runs read no image file. The operating system
pages the file in as it is read (and keeps it in its page cache while memory allows); it is
mapped copy-on-write, so nothing a run does to the tensor reaches the file.

File layout (version 1):

- bytes ``[0, 4096)``: a JSON header padded with spaces, ``{"format": "cilkit-decoded",
  "version": 1, "images": N, "kept": K, "size": S, "mode": "eval"}``;
- then the ``K`` images that decoded, ``uint8`` ``(K, 3, S, S)`` in C order (the unreadable
  ones are left out, so the rows of each split are one contiguous, copy-free slice);
- then ``N`` bytes, 1 where image ``i`` decoded and 0 where it did not.

A file is written under a temporary name and renamed when complete, so a decode that is killed
leaves no file under the cache's name (its temporary file is removed by the next writer). Writers
of the same cache take an advisory lock, so DDP ranks decode it once between them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cilkit.data.lazy import ResizeMode, iter_decoded

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: caches are written unlocked
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

FORMAT = "cilkit-decoded"
VERSION = 1
HEADER_BYTES = 4096
"""Size of the header; the images start at this (page-aligned) offset."""


@dataclass(frozen=True)
class Decoded:
    """The images of a memory-mapped cache.

    Attributes:
        images: ``uint8`` ``(K, 3, S, S)``: the images that decoded, mapped from the file.
        ok: boolean ``(N,)``: which of the ``N`` files decoded (their rows are ``images``).
        errors: ``{index: reason}`` of the files that did not decode (empty when read back).
        path: the cache file.
        from_cache: whether the file was there already (no image file was read).
    """

    images: np.ndarray
    ok: np.ndarray
    errors: dict[int, str]
    path: Path
    from_cache: bool


def cache_bytes(n: int, size: int) -> int:
    """Bytes on disk of a cache of ``n`` images of ``size x size`` (all of them readable)."""
    return HEADER_BYTES + n * 3 * size * size + n


def _header(n: int, kept: int, size: int, mode: str) -> bytes:
    meta = {"format": FORMAT, "version": VERSION, "images": n, "kept": kept}
    text = json.dumps({**meta, "size": size, "mode": mode}).encode("ascii")
    return text + b" " * (HEADER_BYTES - len(text))


def read_cache(path: Path, n: int, size: int, mode: ResizeMode = "eval") -> Decoded | None:
    """Map the cache ``path`` when it is complete and holds ``n`` images at ``size``.

    Returns:
        The images, or None when the file is missing, incomplete or of other images.
    """
    try:
        on_disk = path.stat().st_size
        with open(path, "rb") as f:
            meta = json.loads(f.read(HEADER_BYTES).decode("ascii"))
            expected = (FORMAT, VERSION, n, size, mode)
            if (meta["format"], meta["version"], meta["images"], meta["size"], meta["mode"]) != (
                expected
            ):
                raise ValueError("other images")
            kept = int(meta["kept"])
            row = 3 * size * size
            if on_disk != HEADER_BYTES + kept * row + n:
                raise ValueError(f"{on_disk} bytes, expected {HEADER_BYTES + kept * row + n}")
            f.seek(HEADER_BYTES + kept * row)
            ok = np.frombuffer(f.read(n), dtype=np.uint8).astype(bool)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        logger.info("ignoring the unusable decode cache %s (%s)", path, e)
        return None
    if int(ok.sum()) != kept:
        logger.info("ignoring the unusable decode cache %s (its mask does not match)", path)
        return None
    shape = (kept, 3, size, size)
    if kept:
        images = np.memmap(path, dtype=np.uint8, mode="c", offset=HEADER_BYTES, shape=shape)
    else:
        images = np.zeros(shape, dtype=np.uint8)
    return Decoded(images, ok, {}, path, from_cache=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``path``'s lock file; yields whether it is held."""
    fd = -1
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    if fd < 0:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = True
        except OSError:  # a file system without locks: go on unlocked
            held = False
        yield held
    finally:
        os.close(fd)


def _write(path: Path, paths: Sequence[str], size: int, mode: ResizeMode) -> dict[int, str]:
    """Decode ``paths`` into a temporary file and rename it to ``path`` once it is complete."""
    n = len(paths)
    ok = np.zeros(n, dtype=bool)
    errors: dict[int, str] = {}
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(b" " * HEADER_BYTES)  # not a header: an unfinished file is never read
            for start, images, chunk_ok, errs in iter_decoded(paths, size, mode):
                ok[start : start + len(images)] = chunk_ok
                errors.update({start + i: reason for i, reason in errs})
                f.write(np.ascontiguousarray(images[chunk_ok]).data)
            f.write(ok.astype(np.uint8).data)
            f.seek(0)
            f.write(_header(n, int(ok.sum()), size, mode))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return errors


def load_or_decode(
    path: Path, paths: Sequence[str], size: int, mode: ResizeMode = "eval"
) -> Decoded:
    """The images of ``paths`` at ``size`` from the cache ``path``, decoding them once if needed.

    Args:
        path: the cache file (its folder must exist and be writable).
        paths: the image files, in the order of the rows.
        size: side length ``S``.
        mode: the resize (see :data:`~cilkit.data.lazy.ResizeMode`).

    Returns:
        The mapped images, with ``errors`` filled when they were decoded now.

    Raises:
        OSError: the cache could not be written (a full disk, ...); no file is left behind.
    """
    n = len(paths)
    found = read_cache(path, n, size, mode)
    if found is not None:
        return found
    with _lock(path) as held:
        found = read_cache(path, n, size, mode)  # another process may have written it meanwhile
        if found is not None:
            return found
        if held:  # no one else is writing: what is left was left by a killed decode
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        errors = _write(path, paths, size, mode)
    written = read_cache(path, n, size, mode)
    if written is None:
        raise OSError(f"the decode cache {path} could not be read back after writing it")
    return Decoded(written.images, written.ok, errors, path, from_cache=False)
