"""Tiny-ImageNet (and subsets of it) from the official CS231n folder layout."""

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
    find_or_fetch,
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
from cilkit.errors import DatasetError

logger = logging.getLogger(__name__)

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
FOLDER = "tiny-imagenet-200"
NATIVE_SIZE = 64
_CACHE_VERSION = "tiny_imagenet/1"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path} ({e}); get the dataset again from {URL}") from None


def find_folder(root: Path) -> Path | None:
    """The Tiny-ImageNet folder: ``root`` itself, ``root/tiny-imagenet-200``, or the one folder
    under ``root`` that holds ``wnids.txt``.

    Raises:
        DatasetError: several folders under ``root`` hold a ``wnids.txt``.
    """
    if (root / "wnids.txt").is_file():
        return root
    if (root / FOLDER / "wnids.txt").is_file():
        return root / FOLDER
    try:
        found = sorted(
            Path(e.path)
            for e in os.scandir(root)
            if e.is_dir() and not e.name.startswith(".") and Path(e.path, "wnids.txt").is_file()
        )
    except OSError:
        return None
    if len(found) > 1:
        names = ", ".join(str(f) for f in found)
        raise DatasetError(
            f"several Tiny-ImageNet folders under {root} ({names}); set data.root to one of them"
        )
    return found[0] if found else None


def _locate(cfg: DataConfig) -> tuple[Path, str]:
    root = resolve_root(cfg)
    folder, note = find_or_fetch(root, lambda: find_folder(root), URL, MD5, cfg.download)
    if folder is not None:
        return folder, note
    how = (
        f"set data.root to the folder that holds {FOLDER}/ (or any folder with wnids.txt, "
        f"train/ and val/), or set data.download=true to download {URL}"
    )
    raise DatasetError(
        f"Tiny-ImageNet not found: looked for wnids.txt in {root}, {root / FOLDER} and the "
        f"folders under {root}; {how}"
    )


def _class_names(folder: Path, wnids: list[str]) -> tuple[str, ...]:
    """First synonym of each wnid from ``words.txt``; the wnid itself when it is not listed."""
    words = folder / "words.txt"
    names: dict[str, str] = {}
    if words.is_file():
        wanted = set(wnids)
        for line in _read_text(words).splitlines():
            wnid, _, text = line.partition("\t")
            if wnid in wanted:
                names[wnid] = text.split(",")[0].strip() or wnid
    return tuple(names.get(w, w) for w in wnids)


def _list_files(
    folder: Path, wnids: list[str]
) -> tuple[list[str], list[int], list[str], list[int]]:
    """Train and val image paths with their class ids, in a fixed order."""
    index = {w: i for i, w in enumerate(wnids)}
    train_paths: list[str] = []
    train_labels: list[int] = []
    for wnid, label in index.items():
        images_dir = folder / "train" / wnid / "images"
        try:
            names = sorted(e.name for e in os.scandir(images_dir) if is_image_file(e.name))
        except OSError:
            raise DatasetError(
                f"Tiny-ImageNet is incomplete: {images_dir} is missing (class {wnid} of "
                f"{folder / 'wnids.txt'}); extract the dataset again"
            ) from None
        if not names:
            raise DatasetError(f"Tiny-ImageNet is incomplete: {images_dir} holds no images")
        train_paths.extend(str(images_dir / n) for n in names)
        train_labels.extend([label] * len(names))

    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DatasetError(
            f"Tiny-ImageNet is incomplete: {annotations} is missing; extract the dataset again"
        )
    val_paths: list[str] = []
    val_labels: list[int] = []
    for n, line in enumerate(_read_text(annotations).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DatasetError(f"{annotations}:{n}: expected 'file<TAB>wnid<TAB>box', got {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:  # a subset defined by wnids.txt: other classes are left out
            continue
        val_paths.append(str(folder / "val" / "images" / name))
        val_labels.append(index[wnid])
    if not val_paths:
        raise DatasetError(f"{annotations} lists no image of the classes in wnids.txt")
    missing = next((p for p in val_paths if not os.path.isfile(p)), None)
    if missing is not None:
        raise DatasetError(
            f"Tiny-ImageNet is incomplete: {missing} (listed in {annotations}) is missing"
        )
    return train_paths, train_labels, val_paths, val_labels


@register_dataset("tiny_imagenet")
def load_tiny_imagenet(cfg: DataConfig) -> DatasetSplits:
    """Tiny-ImageNet: 64x64 colour images, 200 classes (or the wnids.txt subset), val as test.

    Reads ``root/tiny-imagenet-200/`` (or ``root`` itself, or the one folder under ``root`` that
    holds ``wnids.txt``, e.g. ``tiny-imagenet-100a``): ``wnids.txt`` gives the classes and their
    order, ``words.txt`` their names, ``train/<wnid>/images/*.JPEG`` the training images and
    ``val/images`` with ``val/val_annotations.txt`` the test split. Images are decoded in worker
    processes, resized to ``cfg.image_size`` when set, and cached as ``.npz`` under
    ``root/.cilkit_cache/`` for the next load. ``provenance`` names the folder, the counts and
    whether the cache was used.

    Args:
        cfg: data config (``root``, ``download``, ``image_size``, ``on_unreadable``).

    Returns:
        Train and test splits of shape ``(N, 3, S, S)``, ``S = image_size or 64``.
    """
    root = resolve_root(cfg)
    folder, note = _locate(cfg)
    wnids_text = _read_text(folder / "wnids.txt")
    wnids = [w.strip() for w in wnids_text.splitlines() if w.strip()]
    if not wnids:
        raise DatasetError(f"{folder / 'wnids.txt'} lists no class")
    if len(set(wnids)) != len(wnids):
        raise DatasetError(f"{folder / 'wnids.txt'} lists a class twice")
    names = _class_names(folder, wnids)
    train_paths, train_labels, val_paths, val_labels = _list_files(folder, wnids)
    size = cfg.image_size or NATIVE_SIZE

    n_train, n_val = len(train_paths), len(val_paths)
    key = fingerprint(
        _CACHE_VERSION,
        size,
        "\n".join(wnids),
        [os.path.relpath(p, folder) for p in train_paths],
        [f"{os.path.relpath(p, folder)}:{y}" for p, y in zip(val_paths, val_labels, strict=True)],
    )
    cache = cache_path(root, f"tiny_imagenet-{folder.name}-{size}px-{key}.npz")
    shapes = {
        "train_images": (n_train, 3, size, size),
        "train_ok": (n_train,),
        "test_images": (n_val, 3, size, size),
        "test_ok": (n_val,),
    }
    arrays = load_cache(cache, shapes)
    errors: dict[int, str] = {}
    if arrays is not None:
        decoded = f"decoded at {size}px, read from the cache {cache}"
    else:
        images, ok, errors = decode_images(train_paths + val_paths, size, "resize")
        arrays = {
            "train_images": images[:n_train],
            "train_ok": ok[:n_train],
            "test_images": images[n_train:],
            "test_ok": ok[n_train:],
        }
        cached = f"cached in {cache}" if save_cache(cache, arrays) else "not cached"
        decoded = f"decoded at {size}px from the image files, {cached}"

    ok = np.concatenate([arrays["train_ok"], arrays["test_ok"]])
    keep_train = handle_unreadable(
        f"tiny_imagenet {folder}",
        train_paths + val_paths,
        ok,
        errors,
        cfg.on_unreadable,
        base=folder,
        log=logger,
    )
    keep_val = keep_train[keep_train >= n_train] - n_train
    keep_train = keep_train[keep_train < n_train]

    n_bad = int((~ok).sum())
    notes = (
        f"{plural(len(wnids), 'class')} from wnids.txt, {plural(n_train, 'train image')} and "
        f"{plural(n_val, 'val image')}",
        decoded,
        f"{n_bad} unreadable skipped" if n_bad else "",
        note,
    )

    def split(images: np.ndarray, labels: list[int], keep: np.ndarray) -> ImageSet:
        if len(keep) != len(labels):
            images = images[keep]
            labels = [labels[i] for i in keep]
        return ImageSet(int64_labels(labels), names, uint8_images(images))

    return DatasetSplits(
        name="tiny_imagenet",
        train=split(arrays["train_images"], train_labels, keep_train),
        test=split(arrays["test_images"], val_labels, keep_val),
        preset="tiny_imagenet",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        root=folder,
        provenance=f"{folder} ({'; '.join(n for n in notes if n)})",
    )
