"""Writers of tiny datasets in the exact official on-disk formats, for the adapter tests.

Every writer returns the arrays it wrote so tests can check that pixels survive loading.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR100_COARSE_NAMES = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
]


# --------------------------------------------------------------------------------------------
# CIFAR pickles
# --------------------------------------------------------------------------------------------


class _Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes pickles the way Python 2's cPickle wrote the official CIFAR files.

    Python 2 ``str`` (used for keys, names and the raw bytes of numpy arrays) is a byte string
    stored with the ``BINSTRING`` opcodes, which Python 3 decodes to ``str`` under
    ``encoding="latin1"``; numpy's array helper is referenced as ``numpy.core.multiarray``.
    """

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        n = len(data)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + data)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is np.zeros(1).__reduce__()[0]:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dump_cifar_pickle(obj: dict[str, Any], path: Path, style: str = "py2") -> None:
    """Write one CIFAR pickle.

    Args:
        obj: the dictionary, with ``str`` keys and names.
        path: file to write.
        style: ``"py2"`` = byte-for-byte like the official files (protocol 2, Python 2 strings);
            ``"py3"`` = ``bytes`` keys and names at the default protocol, like
            ``shared/data/cifar10_jpeg_to_batches.py`` writes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "py2":
        buf = io.BytesIO()
        _Py2StylePickler(buf, protocol=2).dump(obj)
        path.write_bytes(buf.getvalue())
        return

    def enc(v: Any) -> Any:
        if isinstance(v, str):
            return v.encode()
        if isinstance(v, list):
            return [enc(x) for x in v]
        return v

    path.write_bytes(pickle.dumps({k.encode(): enc(v) for k, v in obj.items()}))


def _cifar_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def write_cifar10(
    root: Path, per_class: int = 2, test_per_class: int = 1, style: str = "py2", seed: int = 0
) -> dict[str, np.ndarray]:
    """Write ``root/cifar-10-batches-py/`` with ``per_class`` train images per class.

    Returns:
        ``train_x``, ``train_y``, ``test_x``, ``test_y`` as written ((N, 3, 32, 32) images).
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    train_y = np.tile(np.arange(10), per_class)
    rng.shuffle(train_y)
    test_y = np.tile(np.arange(10), test_per_class)
    train_x, test_x = _cifar_images(rng, len(train_y)), _cifar_images(rng, len(test_y))
    bounds = np.linspace(0, len(train_y), 6).astype(int)
    for b in range(5):
        lo, hi = bounds[b], bounds[b + 1]
        batch = {
            "batch_label": f"training batch {b + 1} of 5",
            "labels": [int(y) for y in train_y[lo:hi]],
            "data": train_x[lo:hi].reshape(-1, 3072),
            "filenames": [f"img_{i}.png" for i in range(lo, hi)],
        }
        dump_cifar_pickle(batch, folder / f"data_batch_{b + 1}", style)
    test = {
        "batch_label": "testing batch 1 of 1",
        "labels": [int(y) for y in test_y],
        "data": test_x.reshape(-1, 3072),
        "filenames": [f"test_{i}.png" for i in range(len(test_y))],
    }
    dump_cifar_pickle(test, folder / "test_batch", style)
    meta = {"num_cases_per_batch": 10000, "label_names": CIFAR10_NAMES, "num_vis": 3072}
    dump_cifar_pickle(meta, folder / "batches.meta", style)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def cifar100_fine_names() -> list[str]:
    """100 distinct fine class names (placeholders for the official ones)."""
    return [f"fine_{i:02d}" for i in range(100)]


def write_cifar100(
    root: Path, per_class: int = 1, test_per_class: int = 1, style: str = "py2", seed: int = 1
) -> dict[str, np.ndarray]:
    """Write ``root/cifar-100-python/{train,test,meta}``; coarse label = fine label // 5.

    Returns:
        ``train_x``, ``train_y``, ``train_coarse``, ``test_x``, ``test_y``, ``test_coarse``.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    out: dict[str, np.ndarray] = {}
    for split, k in (("train", per_class), ("test", test_per_class)):
        fine = np.tile(np.arange(100), k)
        rng.shuffle(fine)
        images = _cifar_images(rng, len(fine))
        batch = {
            "filenames": [f"{split}_{i}.png" for i in range(len(fine))],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": [int(y) for y in fine],
            "coarse_labels": [int(y) // 5 for y in fine],
            "data": images.reshape(-1, 3072),
        }
        dump_cifar_pickle(batch, folder / split, style)
        out[f"{split}_x"], out[f"{split}_y"], out[f"{split}_coarse"] = images, fine, fine // 5
    meta = {"fine_label_names": cifar100_fine_names(), "coarse_label_names": CIFAR100_COARSE_NAMES}
    dump_cifar_pickle(meta, folder / "meta", style)
    return out


def write_malicious_pickle(path: Path, marker: Path) -> None:
    """A pickle that would run ``touch marker`` through ``os.system`` when loaded unsafely."""

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return (os.system, (f"touch {marker}",))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}, protocol=2))


def make_tar_gz(folder: Path, archive: Path) -> Path:
    """Pack ``folder`` (as its own name) into a ``.tar.gz`` like the official archives."""
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return archive


# --------------------------------------------------------------------------------------------
# Fashion-MNIST IDX
# --------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a ``uint8`` array: magic ``00 00 08 ndim``, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fashion_mnist(
    folder: Path, n_train: int = 20, n_test: int = 10, seed: int = 2
) -> dict[str, np.ndarray]:
    """Write the four official ``*-ubyte.gz`` files into ``folder``.

    Returns:
        ``train_x`` (N, 28, 28), ``train_y``, ``test_x``, ``test_y``.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, np.ndarray] = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


# --------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------


def two_tone(
    color_top: tuple[int, int, int], color_bottom: tuple[int, int, int], h: int, w: int
) -> np.ndarray:
    """An RGB ``(h, w, 3)`` image: ``color_top`` above row ``h // 2``, ``color_bottom`` below."""
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[: h // 2] = color_top
    img[h // 2 :] = color_bottom
    return img


def class_colors(i: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two distinct flat colours that identify class ``i`` in image fixtures."""
    top = (40 + 50 * (i % 4), 200 - 30 * (i % 5), 30 + 60 * (i % 3))
    bottom = (250 - top[0], 255 - top[1], 250 - top[2])
    return top, bottom


def save_image(array: np.ndarray, path: Path, fmt: str | None = None) -> None:
    """Save an RGB ``(h, w, 3)`` array (JPEG at high quality or PNG, from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"quality": 95} if path.suffix.lower() in (".jpeg", ".jpg") else {}
    Image.fromarray(array).save(path, format=fmt, **kwargs)


def write_tiny_imagenet(
    root: Path,
    folder_name: str = "tiny-imagenet-200",
    wnids: tuple[str, ...] = ("n01443537", "n01629819", "n01641577"),
    per_class: int = 3,
    val_per_class: int = 2,
    extra_val_wnid: str | None = None,
) -> Path:
    """Write the official Tiny-ImageNet tree with 64x64 two-tone JPEGs (class ``i`` colours).

    ``wnids.txt`` lists the classes in the given (not sorted) order; ``words.txt`` has several
    synonyms per line and unrelated wnids; ``val_annotations.txt`` interleaves the classes.
    ``extra_val_wnid`` adds a val image of a class absent from ``wnids.txt``.

    Returns:
        The dataset folder.
    """
    folder = root / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    words = ["n00001740\tentity"]
    words += [f"{w}\tthing {i}, other synonym {i}" for i, w in enumerate(wnids)]
    words.append("n99999999\tunused, unused too")
    (folder / "words.txt").write_text("\n".join(words) + "\n")
    for i, wnid in enumerate(wnids):
        boxes = []
        for j in range(per_class):
            name = f"{wnid}_{j}.JPEG"
            save_image(
                two_tone(*class_colors(i), 64, 64), folder / "train" / wnid / "images" / name
            )
            boxes.append(f"{name}\t0\t0\t63\t63")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    lines = []
    k = 0
    for j in range(val_per_class):
        for i, wnid in enumerate(wnids):
            name = f"val_{k}.JPEG"
            save_image(two_tone(*class_colors(i), 64, 64), folder / "val" / "images" / name)
            lines.append(f"{name}\t{wnid}\t{j}\t{j}\t60\t60")
            k += 1
    if extra_val_wnid is not None:
        name = f"val_{k}.JPEG"
        save_image(two_tone((0, 0, 0), (0, 0, 0), 64, 64), folder / "val" / "images" / name)
        lines.append(f"{name}\t{extra_val_wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def write_imagefolder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "ant", "bee"),
    per_class: int = 3,
    test_per_class: int = 2,
    size: int = 16,
    test_name: str = "val",
) -> Path:
    """Write ``root/{train,<test_name>}/<class>/<i>.png`` with lossless two-tone images.

    Class ``classes[i]`` (in the given order) uses :func:`class_colors` ``(i)``; a ``notes.txt``
    in each class folder must be ignored.

    Returns:
        ``root``.
    """
    for split, n in (("train", per_class), (test_name, test_per_class)):
        for i, cls in enumerate(classes):
            for j in range(n):
                save_image(two_tone(*class_colors(i), size, size), root / split / cls / f"{j}.png")
            (root / split / cls / "notes.txt").write_text("not an image\n")
    return root


# --------------------------------------------------------------------------------------------
# Benchmarks of pre-trained-model CIL (PILOT / APER layouts), CUB-200-2011, ImageNet
# --------------------------------------------------------------------------------------------


def imagenet_wnids(n: int, start: int = 0) -> list[str]:
    """``n`` real ImageNet-1k wnids (from cilkit's class list), from class id ``start``."""
    from cilkit.data.datasets._ptm import imagenet_names

    return list(imagenet_names())[start : start + n]


def write_pilot_benchmark(
    root: Path,
    classes: list[str] | tuple[str, ...],
    per_class: int = 1,
    test_per_class: int = 1,
    size: int = 8,
) -> Path:
    """Write ``root/{train,test}/<class>/<i>.png`` as LAMDA-PILOT and APER distribute their sets.

    Class ``classes[i]`` (in the given order, which need not be sorted) has the colours
    :func:`class_colors` ``(i)``.

    Returns:
        ``root``.
    """
    return write_imagefolder(root, tuple(classes), per_class, test_per_class, size, "test")


def cub_folder_names(n: int = 200) -> list[str]:
    """``001.Bird_name_1`` ... : class folder names in CUB-200-2011's style."""
    return [f"{i:03d}.Bird_name_{i}" for i in range(1, n + 1)]


def write_cub_official(
    root: Path, num_classes: int = 200, per_class: int = 2, size: int = 16
) -> dict[str, list]:
    """Write ``root/CUB_200_2011/`` in the official layout with two-tone JPEGs.

    Image ids interleave the classes; in each class the first image is a training image and
    the others test images. ``README`` and ``attributes/`` are there as in the archive.

    Returns:
        ``train`` and ``test``: lists of ``(relative path, class id)``, in image-id order.
    """
    folder = root / "CUB_200_2011"
    names = cub_folder_names(num_classes)
    (folder / "attributes").mkdir(parents=True, exist_ok=True)
    (folder / "attributes" / "attributes.txt").write_text("1 has_bill_shape::curved\n")
    (folder / "README").write_text("CUB-200-2011\n")
    (folder / "classes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    images, labels, split = [], [], []
    out: dict[str, list] = {"train": [], "test": []}
    image_id = 0
    for j in range(per_class):
        for c, name in enumerate(names):
            image_id += 1
            rel = f"{name}/{name.split('.', 1)[1]}_{j:04d}_{image_id}.jpg"
            save_image(two_tone(*class_colors(c), size, size), folder / "images" / rel)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {1 if j == 0 else 0}")
            out["train" if j == 0 else "test"].append((rel, c))
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return out
