"""Fashion-MNIST from the official IDX files (``*-ubyte.gz``)."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, ImageSet, register_dataset
from cilkit.data.datasets._common import (
    Md5Check,
    file_list,
    int64_labels,
    md5_note,
    resolve_root,
    root_note,
    uint8_images,
)
from cilkit.data.download import download_url
from cilkit.errors import DatasetError

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
"""Official host (the one torchvision uses)."""
FILES = {
    "train_images": ("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"),
}
"""Official file stems and the MD5 of their ``.gz`` downloads."""
DATA_MD5 = {
    "train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
    "test_images": "8181f5470baa50b63fa0f6fddb340f0a",
    "test_labels": "15d484375f8d13e6eb1aabb0c3f46965",
}
"""MD5 of the official files once decompressed (the IDX data itself). A recompressed ``.gz``
(Debian's ``dataset-fashion-mnist`` stores the files without their original gzip header) differs
from the download but holds the same data."""
SYSTEM_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
"""Where Debian's ``dataset-fashion-mnist`` package installs the files."""
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MEAN = (0.2860,)
STD = (0.3530,)

_IDX_DTYPES = {0x08: np.uint8}


def _read(path: Path) -> tuple[bytes, bytes]:
    """The file's bytes and its data (decompressed when the name ends in ``.gz``)."""
    try:
        stored = path.read_bytes()
        return stored, gzip.decompress(stored) if path.suffix == ".gz" else stored
    except (OSError, EOFError, zlib.error) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise DatasetError(
            f"cannot read {path} ({reason}): the file is truncated or corrupted; delete it and "
            f"get it again from {URL}"
        ) from None


def _parse_idx(raw: bytes, path: Path, ndim: int) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] != ndim:
        raise DatasetError(
            f"{path} is not an IDX file of {ndim}-d unsigned bytes (bad magic number "
            f"{raw[:4].hex() or 'none'}); get the official file from {URL}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated (incomplete IDX header); get it again from {URL}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path} holds {len(raw) - header} data bytes but its header announces {expected} "
            f"(shape {shape}): the file is truncated or corrupted; get it again from {URL}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file (gzip-compressed when its name ends in ``.gz``).

    Args:
        path: the file.
        ndim: number of dimensions the file must have (3 for images, 1 for labels).

    Returns:
        The array, ``uint8``, of the shape stored in the header.

    Raises:
        DatasetError: the file is unreadable, truncated or not an unsigned-byte IDX file of
            ``ndim`` dimensions.
    """
    return _parse_idx(_read(path)[1], path, ndim)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def read_checked(key: str, path: Path, ndim: int) -> tuple[np.ndarray, Md5Check]:
    """:func:`read_idx` of the official file ``key`` plus its MD5 against the official one.

    A ``.gz`` file is compared with the official download; when that differs, its decompressed
    data is compared with the official data (:data:`DATA_MD5`). An uncompressed file is
    compared with the official data.
    """
    stored, raw = _read(path)
    array = _parse_idx(raw, path, ndim)
    data_md5 = _md5(raw)
    if path.suffix == ".gz":
        check = Md5Check(path.name, _md5(stored), FILES[key][1], data_md5 == DATA_MD5.get(key))
    else:
        check = Md5Check(path.name, data_md5, DATA_MD5.get(key))
    return array, check


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path) -> dict[str, Path] | None:
    found = {key: _find_file(folder, stem) for key, (stem, _) in FILES.items()}
    if all(p is not None for p in found.values()):
        return {k: p for k, p in found.items() if p is not None}
    return None


def candidate_dirs(root: Path) -> list[Path]:
    """Folders searched, in order: under ``root``, then the system-wide location."""
    return [root / "fashion-mnist", root, root / "FashionMNIST" / "raw", *SYSTEM_DIRS]


@register_dataset("fashion_mnist")
def load_fashion_mnist(cfg: DataConfig) -> DatasetSplits:
    """Fashion-MNIST: 28x28 greyscale clothing, 10 classes, 60,000 train / 10,000 test.

    Reads the four official IDX files from ``root/fashion-mnist/``, ``root/`` or
    ``/usr/share/datasets/fashion-mnist/`` (Debian's ``dataset-fashion-mnist``), else downloads
    them into ``root/fashion-mnist/`` when ``cfg.download`` is set. ``provenance`` names the
    files read, whether their MD5s match the official files, and says so when they were found
    outside ``root``.

    Args:
        cfg: data config (``root``, ``download``).

    Returns:
        Train and test splits of shape ``(N, 1, 28, 28)``.
    """
    root = resolve_root(cfg)
    dirs = candidate_dirs(root)
    files = None
    where = ""
    for i, folder in enumerate(dirs):
        files = _complete(folder)
        if files is not None:
            if i >= len(dirs) - len(SYSTEM_DIRS):
                where = (
                    f"{root_note(cfg, root)} holds no copy; found the system-wide copy of "
                    "Debian's dataset-fashion-mnist"
                )
            break
    if files is None:
        names = ", ".join(f"{stem}.gz" for stem, _ in FILES.values())
        where = ", ".join(str(d) for d in dirs)
        if not cfg.download:
            raise DatasetError(
                f"Fashion-MNIST not found: looked for {names} in {where}; set data.root to the "
                f"folder holding them, set data.download=true (downloads from {URL}), or "
                "apt-get install dataset-fashion-mnist"
            )
        dest = root / "fashion-mnist"
        for stem, md5 in FILES.values():
            download_url(URL + f"{stem}.gz", dest / f"{stem}.gz", md5=md5)
        files = _complete(dest)
        if files is None:
            raise DatasetError(f"Fashion-MNIST download into {dest} left files missing")
        where = f"downloaded from {URL}"

    splits = {}
    checks: list[Md5Check] = []
    for split in ("train", "test"):
        images, images_check = read_checked(f"{split}_images", files[f"{split}_images"], 3)
        labels, labels_check = read_checked(f"{split}_labels", files[f"{split}_labels"], 1)
        checks += [images_check, labels_check]
        if len(images) != len(labels):
            raise DatasetError(
                f"{files[f'{split}_images']} holds {len(images)} images but "
                f"{files[f'{split}_labels']} holds {len(labels)} labels; get both again from {URL}"
            )
        if labels.size and int(labels.max()) >= len(CLASS_NAMES):
            raise DatasetError(
                f"{files[f'{split}_labels']} holds label {int(labels.max())}, outside 0..9"
            )
        splits[split] = ImageSet(int64_labels(labels), CLASS_NAMES, uint8_images(images[:, None]))
    folder = files["train_images"].parent
    names = [files[k].name for k in ("train_images", "train_labels", "test_images", "test_labels")]
    notes = "; ".join(n for n in (md5_note(checks), where) if n)
    return DatasetSplits(
        name="fashion_mnist",
        train=splits["train"],
        test=splits["test"],
        preset="mnist",
        mean=MEAN,
        std=STD,
        root=folder,
        provenance=f"{file_list(folder, names)} ({notes})",
    )
