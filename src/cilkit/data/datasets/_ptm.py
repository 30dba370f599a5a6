"""What the adapters of the pre-trained-model CIL benchmarks share: the ``train/<class>/`` +
``test/<class>/`` layout in which LAMDA-PILOT and APER (Zhou et al., "Revisiting Class-Incremental
Learning with Pre-Trained Models", IJCV 2024) distribute them, class-count checks, and readable
class names (ImageNet wnids through :data:`IMAGENET_CLASSES`, CUB's ``001.Black_footed_Albatross``
as ``Black footed Albatross``).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits
from cilkit.data.datasets._common import plural, resolve_root
from cilkit.data.datasets._folder import (
    check_not_empty,
    class_dirs,
    folder_splits,
    scan,
    split_classes,
)
from cilkit.errors import DatasetError

logger = logging.getLogger(__name__)

PILOT_TEST_SPLITS = ("test", "val")
"""Names of the second split folder, in order of preference (PILOT's is ``test``)."""
IMAGENET_CLASSES = "imagenet_classes.txt"
"""The 1,000 ImageNet-1k wnids and names in class-id order (in ``lists/``)."""
_CUB_FOLDER = re.compile(r"^\d{3}\.(.+)$")
_WNID = re.compile(r"^n\d{8}$")


def read_list(name: str) -> list[str]:
    """The lines of the package data file ``lists/<name>``, comments and blank lines left out."""
    text = (resources.files("cilkit.data.datasets") / "lists" / name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


@functools.cache
def imagenet_names() -> dict[str, str]:
    """``{wnid: name}`` of the 1,000 ImageNet-1k classes (:data:`IMAGENET_CLASSES`)."""
    return dict(line.split("\t", 1) for line in read_list(IMAGENET_CLASSES))


def readable_name(folder: str) -> str:
    """A class folder's name for people: an ImageNet wnid's name, CUB's ``NNN.Some_bird`` as
    ``Some bird``, any other folder name as it is."""
    if _WNID.match(folder):
        return imagenet_names().get(folder, folder)
    cub = _CUB_FOLDER.match(folder)
    return cub.group(1).replace("_", " ") if cub else folder


def find_pilot_folder(root: Path, subfolders: Sequence[str], title: str) -> tuple[Path, Path, Path]:
    """The folder holding ``train/`` and ``test/``: ``root`` itself or ``root/<subfolder>``.

    Returns:
        ``(folder, train_dir, test_dir)``.

    Raises:
        DatasetError: no candidate holds ``train/``, or the one that does has no test split.
    """
    candidates = [root, *(root / s for s in subfolders)]
    for folder in candidates:
        if (folder / "train").is_dir():
            test = next((folder / s for s in PILOT_TEST_SPLITS if (folder / s).is_dir()), None)
            if test is None:
                raise DatasetError(
                    f"{title}: {folder / 'test'} not found next to {folder / 'train'}; the "
                    "benchmark has a train and a test split, extract its archive again"
                )
            return folder, folder / "train", test
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetError(
        f"{title} not found: no train/<class>/ folder in {looked}; set data.root to the folder "
        f"holding train/ and test/ (LAMDA-PILOT's {subfolders[0]}/ layout)"
    )


def check_class_count(title: str, train_dir: Path, found: int, expected: int) -> None:
    """Raises DatasetError when ``train_dir`` holds another number of classes than expected."""
    if found != expected:
        raise DatasetError(
            f"{title}: {train_dir} holds {found} class folders, the benchmark has {expected}; "
            f"set data.root to the {title} of LAMDA-PILOT / APER (train/ and test/ with "
            f"{expected} class folders each)"
        )


def load_pilot_folder(
    cfg: DataConfig,
    name: str,
    title: str,
    num_classes: int,
    subfolders: Sequence[str],
    log: logging.Logger | None = None,
) -> DatasetSplits:
    """One benchmark in PILOT's layout ``folder/{train,test}/<class>/<image>``.

    Class ids follow the sorted class folder names (torchvision's ``ImageFolder``, which PILOT and
    APER use, with ``class_order = arange``); names are :func:`readable_name` of the folders.

    Args:
        cfg: data config (``root`` is the benchmark's folder or the folder above it).
        name: registry name.
        title: the benchmark's name in messages.
        num_classes: the number of class folders the benchmark has.
        subfolders: the benchmark's folder names under ``data.root`` in PILOT and APER.
        log: where the warning about unreadable files goes.
    """
    folder, train_dir, test_dir = find_pilot_folder(resolve_root(cfg), subfolders, title)
    classes = class_folders(title, train_dir, test_dir, num_classes)
    train, test = scan(train_dir, classes), scan(test_dir, classes)
    check_not_empty(train, test, classes)
    counts = (
        f"{title} in LAMDA-PILOT's train/test layout: {plural(len(classes), 'class')}; "
        f"{plural(len(train), 'image file')} in {train_dir.name}, "
        f"{plural(len(test), 'image file')} in {test_dir.name}"
    )
    return folder_splits(
        cfg,
        name,
        folder,
        [readable_name(c) for c in classes],
        train,
        test,
        head=f"{folder}/{{{train_dir.name}, {test_dir.name}}}",
        notes=(counts,),
        log=log or logger,
    )


def class_folders(title: str, train_dir: Path, test_dir: Path, num_classes: int) -> list[str]:
    """The class folders the two splits share, checked against the benchmark's class count."""
    check_class_count(title, train_dir, len(class_dirs(train_dir)), num_classes)
    return split_classes(train_dir, test_dir)
