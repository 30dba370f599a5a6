"""CIFAR-10 and CIFAR-100 from the official python pickles, read with a restricted unpickler."""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, ImageSet, register_dataset
from cilkit.data.datasets._common import (
    Md5Check,
    file_list,
    find_or_fetch,
    int64_labels,
    md5_note,
    resolve_root,
    uint8_images,
)
from cilkit.data.download import file_md5
from cilkit.errors import DatasetError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILE_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
"""MD5 of each file of the official archive (the values torchvision checks)."""
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_FILE_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
"""MD5 of each file of the official archive (the values torchvision checks)."""
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_PIXELS = 3 * 32 * 32
_SAFE_ENCODINGS = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})


def _encode_latin1(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to latin-1: how protocol-2 pickles store ``bytes``."""
    if encoding.lower() not in _SAFE_ENCODINGS:
        raise pickle.UnpicklingError(f"encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may reference: numpy array and dtype reconstruction."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.int64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _encode_latin1,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only builtin containers, numpy arrays and dtypes.

    Pickle files can run arbitrary code while they load; any global other than numpy's array
    reconstruction helpers is refused with a :class:`DatasetError` naming the file.
    """

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DatasetError(
                f"{self._path}: refusing to load the pickle, it references '{module}.{name}' "
                "(a CIFAR file holds only arrays and lists); it is not an official CIFAR file"
            ) from None


def _text(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def load_pickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR pickle safely; ``bytes`` keys and names become ``str``.

    Args:
        path: the pickle file.

    Returns:
        The top-level dictionary with ``str`` keys; lists of ``bytes`` become lists of ``str``.

    Raises:
        DatasetError: the file is unreadable, truncated, not a dictionary, or references a
            global outside the allowed numpy helpers.
    """
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, path).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        MemoryError,
        OSError,
    ) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise DatasetError(
            f"cannot read {path} ({reason}): the file is truncated or corrupted; delete the "
            "folder and extract the official archive again"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, not a CIFAR dictionary")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, list | tuple):
            value = [_text(v) for v in value]
        out[str(_text(key))] = value
    return out


def _field(batch: dict[str, Any], key: str, path: Path) -> Any:
    if key not in batch:
        keys = ", ".join(sorted(batch))
        raise DatasetError(f"{path} has no '{key}' entry (it has: {keys}); not a CIFAR file")
    return batch[key]


def _labels(batch: dict[str, Any], key: str, path: Path, n: int, num_classes: int) -> np.ndarray:
    try:
        labels = np.asarray(_field(batch, key, path), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: '{key}' is not a list of integers") from None
    if len(labels) != n:
        raise DatasetError(f"{path} holds {n} images but {len(labels)} '{key}'")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: '{key}' holds ids outside 0..{num_classes - 1}")
    return labels


def _images(batch: dict[str, Any], path: Path) -> np.ndarray:
    data = _field(batch, "data", path)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype.kind not in "ui"
        or data.ndim != 2
        or data.shape[1] != _PIXELS
    ):
        shape = getattr(data, "shape", type(data).__name__)
        raise DatasetError(
            f"{path}: 'data' is not a (N, {_PIXELS}) integer array (got {shape}); not a CIFAR file"
        )
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32)


def _read_split(
    folder: Path, files: Sequence[str], label_keys: Sequence[str], num_classes: Sequence[int]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Concatenate the images and each kind of labels of the batch ``files``."""
    images: list[np.ndarray] = []
    labels: list[list[np.ndarray]] = [[] for _ in label_keys]
    for name in files:
        path = folder / name
        batch = load_pickle(path)
        imgs = _images(batch, path)
        images.append(imgs)
        for out, key, k in zip(labels, label_keys, num_classes, strict=True):
            out.append(_labels(batch, key, path, len(imgs), k))
    return np.concatenate(images), [np.concatenate(ls) for ls in labels]


def _names(meta: dict[str, Any], key: str, path: Path, expected: int) -> tuple[str, ...]:
    names = _field(meta, key, path)
    if not isinstance(names, list) or len(names) != expected:
        raise DatasetError(f"{path}: '{key}' should list {expected} class names")
    return tuple(str(n) for n in names)


def provenance(folder: Path, files: Sequence[str], official: dict[str, str], note: str) -> str:
    """``folder/{files}`` with their MD5s against the official ones, and how they got there.

    Args:
        folder: the folder read.
        files: the files read, in order.
        official: official MD5 of each file name (a name absent here is "not checked").
        note: how the folder came to be (e.g. extracted from the archive), or ``""``.
    """
    checks = [Md5Check(f, file_md5(folder / f), official.get(f)) for f in files]
    notes = "; ".join(n for n in (md5_note(checks), note) if n)
    return f"{file_list(folder, files)} ({notes})"


def _locate(
    cfg: DataConfig,
    title: str,
    folder_name: str,
    required: Sequence[str],
    url: str,
    md5: str,
) -> tuple[Path, str]:
    """The folder holding all ``required`` files, extracting or downloading the archive if needed.

    Looks in ``root/<folder_name>`` and in ``root`` itself; then extracts ``root/<archive>``
    when it is there (checking its MD5), or downloads it when ``cfg.download`` is set.

    Returns:
        The folder, and how it came to be there (``""`` when it already was).
    """
    root = resolve_root(cfg)
    candidates = [root / folder_name, root]

    def find() -> Path | None:
        for folder in candidates:
            if all((folder / f).is_file() for f in required):
                return folder
        return None

    folder, note = find_or_fetch(root, find, url, md5, cfg.download)
    if folder is not None:
        return folder, note
    partial = next((c for c in candidates if any((c / f).is_file() for f in required)), None)
    if partial is not None:
        missing = ", ".join(f for f in required if not (partial / f).is_file())
        raise DatasetError(
            f"{title} is incomplete: {partial} lacks {missing}; delete it and extract {url} again"
        )
    files = ", ".join(required)
    looked = " and ".join(str(c) for c in candidates)
    how = (
        f"set data.root to the folder that holds {folder_name}/, or set data.download=true "
        f"to download {url}"
    )
    if cfg.download:
        how = f"put {url.rsplit('/', 1)[-1]} from {url} in {root}"
    raise DatasetError(f"{title} not found: looked for {files} in {looked}; {how}")


@register_dataset("cifar10")
def load_cifar10(cfg: DataConfig) -> DatasetSplits:
    """CIFAR-10: 32x32 colour images, 10 classes, 50,000 train / 10,000 test.

    Reads the official python layout ``root/cifar-10-batches-py/`` (``data_batch_1..5``,
    ``test_batch``, ``batches.meta``), extracting ``root/cifar-10-python.tar.gz`` or downloading
    it from the official host when ``cfg.download`` is set. ``provenance`` names the folder and
    files read and whether their MD5s match the official files.

    Args:
        cfg: data config (``root``, ``download``).

    Returns:
        Train and test splits of shape ``(N, 3, 32, 32)``.
    """
    required = (*CIFAR10_TRAIN, "test_batch", "batches.meta")
    folder, note = _locate(cfg, "CIFAR-10", CIFAR10_FOLDER, required, CIFAR10_URL, CIFAR10_MD5)
    meta_path = folder / "batches.meta"
    names = _names(load_pickle(meta_path), "label_names", meta_path, 10)
    train_x, (train_y,) = _read_split(folder, CIFAR10_TRAIN, ("labels",), (10,))
    test_x, (test_y,) = _read_split(folder, ("test_batch",), ("labels",), (10,))
    return DatasetSplits(
        name="cifar10",
        train=ImageSet(int64_labels(train_y), names, uint8_images(train_x)),
        test=ImageSet(int64_labels(test_y), names, uint8_images(test_x)),
        preset="cifar",
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        root=folder,
        provenance=provenance(folder, required, CIFAR10_FILE_MD5, note),
    )


@register_dataset("cifar100")
def load_cifar100(cfg: DataConfig) -> DatasetSplits:
    """CIFAR-100: 32x32 colour images, 100 classes (20 superclasses), 50,000 train / 10,000 test.

    Reads the official python layout ``root/cifar-100-python/`` (``train``, ``test``, ``meta``),
    extracting ``root/cifar-100-python.tar.gz`` or downloading it from the official host when
    ``cfg.download`` is set. The labels are the fine labels; the superclass labels are kept in
    ``extra["coarse_labels"]`` (split name -> int64 tensor) with their names in
    ``extra["coarse_class_names"]``. ``provenance`` names the folder and files read and whether
    their MD5s match the official files.

    Args:
        cfg: data config (``root``, ``download``).

    Returns:
        Train and test splits of shape ``(N, 3, 32, 32)``.
    """
    required = ("train", "test", "meta")
    folder, note = _locate(cfg, "CIFAR-100", CIFAR100_FOLDER, required, CIFAR100_URL, CIFAR100_MD5)
    meta_path = folder / "meta"
    meta = load_pickle(meta_path)
    fine_names = _names(meta, "fine_label_names", meta_path, 100)
    coarse_names = _names(meta, "coarse_label_names", meta_path, 20)
    keys, sizes = ("fine_labels", "coarse_labels"), (100, 20)
    train_x, (train_fine, train_coarse) = _read_split(folder, ("train",), keys, sizes)
    test_x, (test_fine, test_coarse) = _read_split(folder, ("test",), keys, sizes)
    return DatasetSplits(
        name="cifar100",
        train=ImageSet(int64_labels(train_fine), fine_names, uint8_images(train_x)),
        test=ImageSet(int64_labels(test_fine), fine_names, uint8_images(test_x)),
        preset="cifar",
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        root=folder,
        provenance=provenance(folder, required, CIFAR100_FILE_MD5, note),
        extra={
            "coarse_labels": {
                "train": int64_labels(train_coarse),
                "test": int64_labels(test_coarse),
            },
            "coarse_class_names": coarse_names,
        },
    )
