"""CUB-200-2011 in its official layout, or in the train/test split of LAMDA-PILOT and APER."""

from __future__ import annotations

import logging
from pathlib import Path

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, register_dataset
from cilkit.data.datasets._common import plural, resolve_root
from cilkit.data.datasets._folder import Listing, check_not_empty, file_size, folder_splits
from cilkit.data.datasets._ptm import load_pilot_folder, readable_name
from cilkit.errors import DatasetError

logger = logging.getLogger(__name__)

TITLE = "CUB-200-2011"
NUM_CLASSES = 200
OFFICIAL = "CUB_200_2011"
"""The folder of the official archive ``CUB_200_2011.tgz``."""
META = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
"""The official metadata files (``<id> <value>`` per line), read with ``images/``."""
PILOT = ("cub",)
"""The folder of LAMDA-PILOT's and APER's ``cub.zip`` (``train/<class>/``, ``test/<class>/``)."""


def _is_official(folder: Path) -> bool:
    if not (folder / "images.txt").is_file():
        return False
    missing = next((m for m in (*META, "images") if not (folder / m).exists()), None)
    if missing is not None:
        raise DatasetError(
            f"{TITLE} is incomplete: {folder / missing} is missing; extract CUB_200_2011.tgz again"
        )
    return True


def _table(path: Path) -> dict[int, str]:
    """``{id: value}`` of a metadata file of ``<id> <value>`` lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path} ({e}); extract CUB_200_2011.tgz again") from None
    rows: dict[int, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value.strip():
            raise DatasetError(f"{path}:{n}: expected '<id> <value>', got {line!r}")
        rows[int(key)] = value.strip()
    return rows


def _load_official(cfg: DataConfig, folder: Path) -> DatasetSplits:
    classes_txt = folder / "classes.txt"
    classes = _table(classes_txt)
    if sorted(classes) != list(range(1, len(classes) + 1)) or len(classes) != NUM_CLASSES:
        raise DatasetError(
            f"{TITLE}: {classes_txt} lists {len(classes)} classes, the dataset has {NUM_CLASSES} "
            "numbered 1 to 200; extract CUB_200_2011.tgz again"
        )
    images, labels, is_train = (_table(folder / m) for m in META[:3])
    train, test = Listing(folder / "images"), Listing(folder / "images")
    for image_id in sorted(images):
        label, split = labels.get(image_id, ""), is_train.get(image_id)
        if not label.isdigit() or int(label) not in classes or split not in ("0", "1"):
            raise DatasetError(
                f"{TITLE}: image {image_id} of {folder / 'images.txt'} has no class in "
                "image_class_labels.txt or no 0/1 in train_test_split.txt; extract it again"
            )
        path = str(folder / "images" / images[image_id])
        size = file_size(path)
        if size == 0 and not Path(path).is_file():
            raise DatasetError(
                f"{TITLE} is incomplete: {path} (listed in images.txt) is missing; extract "
                "CUB_200_2011.tgz again"
            )
        split_list = train if split == "1" else test
        split_list.paths.append(path)
        split_list.labels.append(int(label) - 1)
        split_list.sizes.append(size)
    folders = [classes[i] for i in range(1, NUM_CLASSES + 1)]
    check_not_empty(train, test, folders)
    notes = (
        f"{TITLE} in its official layout, official train/test split: "
        f"{plural(NUM_CLASSES, 'class')}; {plural(len(train), 'train image')}, "
        f"{plural(len(test), 'test image')}",
    )
    return folder_splits(
        cfg,
        "cub200",
        folder,
        [readable_name(c) for c in folders],
        train,
        test,
        head=f"{folder}/{{{', '.join(META)}, images/}}",
        notes=notes,
        log=logger,
    )


@register_dataset("cub200")
def load_cub200(cfg: DataConfig) -> DatasetSplits:
    """CUB-200-2011 birds, 200 classes: official layout and split, or LAMDA-PILOT's split.

    Which layout is there decides the split, and the provenance line says which was read:

    - the official ``CUB_200_2011/`` (Wah et al., 2011; ``data.root`` or the folder above it):
      ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt`` (its official split,
      5,994 train and 5,794 test images), ``classes.txt`` and ``images/<class>/<file>.jpg``;
      class ids are ``classes.txt``'s ids minus one;
    - LAMDA-PILOT's and APER's ``cub/`` (their ``cub.zip``, another split of the same images):
      ``train/<class>/`` and ``test/<class>/``, class ids the sorted folder names as their
      ``ImageFolder`` gives (``data/cub/{train,test}`` in PILOT's ``utils/data.py``).

    Looked for in that order at ``data.root``, then under it. Class names are the class folder
    names without their number (``001.Black_footed_Albatross`` is ``Black footed Albatross``).
    Decoded, cached and checked against ``data.manifest`` as image folders are (see
    :func:`cilkit.data.datasets._folder.folder_splits`).

    Args:
        cfg: data config.

    Returns:
        Train and test splits of ``(3, S, S)`` images, 200 classes.
    """
    root = resolve_root(cfg)
    if _is_official(root):
        return _load_official(cfg, root)
    if not (root / "train").is_dir() and _is_official(root / OFFICIAL):
        return _load_official(cfg, root / OFFICIAL)
    if (root / "train").is_dir() or any((root / p).is_dir() for p in PILOT):
        return load_pilot_folder(cfg, "cub200", TITLE, NUM_CLASSES, PILOT, logger)
    raise DatasetError(
        f"{TITLE} not found in {root}: expected the official {OFFICIAL}/ ({', '.join(META)}, "
        f"images/) or LAMDA-PILOT's cub/{{train,test}}/<class>/; set data.root to the folder "
        "holding one of them"
    )
