"""Decoding image files: in bulk for in-memory datasets, one at a time for lazy image folders.

:func:`decode_images` turns a list of files into one ``uint8`` array ``(N, 3, S, S)`` with a
process pool (Pillow decoding is CPU-bound). :class:`FileImageDataset` is a picklable
:class:`torch.utils.data.Dataset` that decodes one file per item, for splits too large to hold in
memory (ImageNet); the engine runs it in DataLoader worker processes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cilkit.errors import DatasetError

if TYPE_CHECKING:
    from cilkit.data.base import ImageSet

ResizeMode = Literal["resize", "crop", "eval"]
"""How an image becomes ``S x S``: ``resize`` stretches it to ``S x S``; ``crop`` resizes the
shorter side to ``S`` and takes the centre square; ``eval`` resizes the shorter side to
``S * 256 / 224`` and takes the centre ``S x S`` crop (the standard ImageNet evaluation resize)."""

MIN_PARALLEL = 2048
"""Fewer images than this are decoded in the calling process (a pool costs ~1 s to start)."""
SERIAL_CHUNK = 256
"""Images decoded at a time in the calling process by :func:`iter_decoded`."""
EXAMPLES = 3
"""How many unreadable files a message names."""


def failure_reason(error: Exception, path: str) -> str:
    """``"Type: message"`` of a decoding error, without the path Pillow repeats in it."""
    text = str(error).replace(f" {path!r}", "").replace(f" {path}", "")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def unreadable_message(
    what: str,
    action: str,
    paths: Sequence[str],
    first_reason: str = "",
    base: str | os.PathLike[str] | None = None,
) -> str:
    """One line about unreadable image files: where, how many, what became of them, which.

    Args:
        what: the dataset and folder, e.g. ``"imagefolder /data/x"``.
        action: what happened to them, said around the count: ``"skipped"``, or with ``{}``
            for the count phrase, e.g. ``"replaced {} by zero images"``.
        paths: the unreadable files, in order (every one is counted, the first
            :data:`EXAMPLES` are named).
        first_reason: why the first one failed (shown after it when given).
        base: folder the named paths are shown relative to (when they lie under it).

    Returns:
        E.g. ``"imagefolder /data/x: skipped 7 unreadable image files, e.g. train/a.jpg
        (UnidentifiedImageError: cannot identify image file), train/b.png, val/c.jpg"``.
    """

    def short(path: str) -> str:
        if base is None:
            return path
        rel = os.path.relpath(path, base)
        return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel

    n = len(paths)
    count = f"{n} unreadable image {'file' if n == 1 else 'files'}"
    head = f"{what}: {action.format(count) if '{}' in action else f'{action} {count}'}"
    named = [short(p) for p in paths[:EXAMPLES]]
    if not named:
        return head
    if first_reason:
        named[0] += f" ({first_reason})"
    return f"{head}{', e.g. ' if n > len(named) else ': '}{', '.join(named)}"


def decode_image(path: str, size: int, mode: ResizeMode = "resize") -> np.ndarray:
    """Decode one image file to an RGB ``uint8`` array ``(3, size, size)``.

    Args:
        path: image file (any format Pillow reads; greyscale, palette and CMYK become RGB).
        size: output side length.
        mode: how to reach ``size x size`` (see :data:`ResizeMode`).

    Returns:
        A C-contiguous ``uint8`` array of shape ``(3, size, size)``.

    Raises:
        OSError, ValueError, ...: whatever Pillow raises for an unreadable or corrupt file.
    """
    with Image.open(path) as im:
        img = im.convert("RGB")
    w, h = img.size
    if mode == "resize":
        if (w, h) != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
    else:
        short = size if mode == "crop" else round(size * 256 / 224)
        scale = short / min(w, h)
        nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _decode_chunk(
    paths: Sequence[str], size: int, mode: ResizeMode
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Decode ``paths``; failures leave a zero image, ``ok=False`` and a (position, reason)."""
    out = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    ok = np.ones(len(paths), dtype=bool)
    errors: list[tuple[int, str]] = []
    for i, path in enumerate(paths):
        try:
            out[i] = decode_image(path, size, mode)
        except Exception as e:  # any decoder failure means "unreadable"
            ok[i] = False
            errors.append((i, failure_reason(e, path)))
    return out, ok, errors


def default_workers() -> int:
    """Worker processes for bulk decoding: the usable CPUs, at most 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 16))


def iter_decoded(
    paths: Sequence[str],
    size: int,
    mode: ResizeMode = "resize",
    workers: int | None = None,
    min_parallel: int = MIN_PARALLEL,
) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[tuple[int, str]]]]:
    """Decode image files chunk by chunk, in order, in worker processes when it pays.

    At most two chunks per worker are in flight, so memory stays bounded however many files
    there are (the memory-mapped cache writes each chunk out as it comes).

    Args:
        paths: image files.
        size: output side length.
        mode: how each image reaches ``size x size`` (see :data:`ResizeMode`).
        workers: worker processes; None = :func:`default_workers`. 1 decodes in this process.
        min_parallel: below this many files the decoding stays in this process.

    Yields:
        ``(start, images, ok, errors)``: the chunk's first index, its ``uint8`` images
        ``(n, 3, size, size)`` (zeros where decoding failed), the mask of those that decoded
        and ``(position in the chunk, reason)`` of the others.
    """
    n = len(paths)
    workers = default_workers() if workers is None else max(1, workers)
    parallel = workers > 1 and n >= max(min_parallel, 2)
    step = max(64, min(2048, math.ceil(n / (workers * 4)))) if parallel else SERIAL_CHUNK
    starts = list(range(0, n, step))
    done = 0
    if parallel:
        try:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                pending: deque = deque()
                while done < len(starts):
                    while done + len(pending) < len(starts) and len(pending) < 2 * workers:
                        s = starts[done + len(pending)]
                        pending.append(
                            pool.submit(_decode_chunk, list(paths[s : s + step]), size, mode)
                        )
                    arr, ok, errs = pending.popleft().result()
                    yield starts[done], arr, ok, errs
                    done += 1
        except (BrokenProcessPool, OSError):
            pass  # no processes (sandbox, out of memory): decode the rest here, slower but correct
    for s in starts[done:]:
        arr, ok, errs = _decode_chunk(list(paths[s : s + step]), size, mode)
        yield s, arr, ok, errs


def decode_images(
    paths: Sequence[str],
    size: int,
    mode: ResizeMode = "resize",
    workers: int | None = None,
    min_parallel: int = MIN_PARALLEL,
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Decode many image files into one array, in parallel worker processes when it pays.

    Args:
        paths: image files.
        size: output side length.
        mode: how each image reaches ``size x size`` (see :data:`ResizeMode`).
        workers: worker processes; None = :func:`default_workers`. 1 decodes in this process.
        min_parallel: below this many files the decoding stays in this process.

    Returns:
        ``(images, ok, errors)``: ``uint8`` images ``(N, 3, size, size)`` (zeros where decoding
        failed), a boolean mask of the files that decoded, and ``{index: reason}`` of the others.
    """
    n = len(paths)
    images = np.zeros((n, 3, size, size), dtype=np.uint8)
    ok = np.ones(n, dtype=bool)
    errors: dict[int, str] = {}
    for s, arr, chunk_ok, errs in iter_decoded(paths, size, mode, workers, min_parallel):
        images[s : s + len(arr)] = arr
        ok[s : s + len(arr)] = chunk_ok
        errors.update({s + i: msg for i, msg in errs})
    return images, ok, errors


class FileImageDataset(Dataset):
    """Image files decoded on access; items are ``(image, i, error)``.

    ``image`` is a ``uint8`` tensor ``(3, S, S)``, ``i`` the item's index and ``error`` the empty
    string, or why the file could not be decoded when ``on_unreadable="skip"`` replaced it by an
    all-zero image. Workers never warn: the process that iterates the DataLoader learns of
    unreadable files from ``error`` and reports them (see
    :meth:`cilkit.engine.data.DeviceSplit._uint8_batches`).

    Each file is resized so its shorter side is ``S * 256 / 224`` and centre-cropped to ``S x S``
    (the standard evaluation resize), which is deterministic; random training augmentation is
    applied later on batches. The object holds only paths and settings, so it pickles cheaply
    into DataLoader worker processes.

    Args:
        paths: image files.
        image_size: output side length ``S``.
        on_unreadable: ``"error"`` raises a :class:`DatasetError` naming an unreadable file;
            ``"skip"`` returns an all-zero image for it and the reason as ``error``.
    """

    def __init__(
        self,
        paths: Sequence[str],
        image_size: int = 224,
        on_unreadable: Literal["skip", "error"] = "error",
    ) -> None:
        self.paths = tuple(str(p) for p in paths)
        self.image_size = int(image_size)
        self.on_unreadable = on_unreadable

    @classmethod
    def from_image_set(
        cls, split: ImageSet, on_unreadable: Literal["skip", "error"] = "error"
    ) -> FileImageDataset:
        """A dataset over the paths of a lazy :class:`~cilkit.data.base.ImageSet`.

        Args:
            split: a split whose ``paths`` are set; its ``image_shape`` gives the size.
            on_unreadable: what to do with a file that cannot be decoded.
        """
        if split.paths is None:
            raise ValueError("FileImageDataset needs an ImageSet that holds paths")
        _, size, _ = split.image_shape
        return cls(split.paths, image_size=size, on_unreadable=on_unreadable)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        path = self.paths[index]
        try:
            arr = decode_image(path, self.image_size, "eval")
        except Exception as e:  # any decoder failure means "unreadable"
            reason = failure_reason(e, path)
            if self.on_unreadable == "error":
                raise DatasetError(
                    f"cannot decode image {path} ({reason}); remove or replace the file, or set "
                    "data.on_unreadable=skip"
                ) from None
            arr = np.zeros((3, self.image_size, self.image_size), dtype=np.uint8)
            return torch.from_numpy(arr), index, reason
        return torch.from_numpy(arr), index, ""
