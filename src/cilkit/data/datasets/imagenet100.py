"""ImageNet-100: the 100 ImageNet classes of UCIR / LUCIR (seed 1993), used by PODNet and PyCIL."""

from __future__ import annotations

import logging

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, register_dataset
from cilkit.data.datasets._common import plural, resolve_root
from cilkit.data.datasets._folder import check_not_empty, class_dirs, folder_splits, scan
from cilkit.data.datasets._ptm import imagenet_names, read_list
from cilkit.errors import DatasetError

logger = logging.getLogger(__name__)

CLASS_LIST = "imagenet100_ucir.txt"
"""The 100 wnids, in class-id order, in ``cilkit/data/datasets/lists/``."""
TEST_SPLITS = ("val", "test")


@register_dataset("imagenet100")
def load_imagenet100(cfg: DataConfig) -> DatasetSplits:
    """ImageNet-100: UCIR's seed-1993 subset of 100 classes, read from an ImageNet folder.

    The subset of Hou et al. (UCIR / LUCIR, CVPR 2019): the 100 classes that
    ``hshustc/CVPR19_Incremental_Learning``'s ``gen_imagenet_subset.py`` draws with
    ``np.random.seed(1993); np.random.choice(classes, 100, replace=False)`` from the 1,000
    sorted ImageNet wnids, shipped as ``lists/imagenet100_ucir.txt``. PODNet
    (``arthurdouillard/incremental_learning.pytorch``) runs it as ``imagenet100ucir``; PyCIL and
    FOSTER read it as ``seed_1993_subset_100_imagenet/``. Another published subset exists:
    PODNet's own ``imagenet100`` (its ``imagenet_split/*_100.txt``) is the first 100 ImageNet
    classes in wnid order (``n01440764`` to ``n01855672``); it is not this one.

    ``data.root`` is a full ImageNet folder (the other 900 class folders are left alone) or a
    copy holding only the 100, with the validation images in ``val/<wnid>/`` folders (or
    ``test/<wnid>/``). Class ids follow the sorted wnids (as ``ImageFolder`` numbers UCIR's copy);
    names are ImageNet's (``lists/imagenet_classes.txt``). A missing class folder is an error.
    Decoded, cached and checked against ``data.manifest`` as image folders are (see
    :func:`cilkit.data.datasets._folder.folder_splits`); the manifest covers the whole of
    ``data.root``, so a full ImageNet folder is hashed whole on the first run.

    Args:
        cfg: data config.

    Returns:
        Train and test splits of ``(3, S, S)`` images, 100 classes.
    """
    root = resolve_root(cfg)
    train_dir = root / "train"
    test_dir = next((root / s for s in TEST_SPLITS if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        missing = train_dir if not train_dir.is_dir() else root / "val"
        raise DatasetError(
            f"ImageNet-100: {missing} not found; set data.root to an ImageNet folder holding "
            "train/<wnid>/ and val/<wnid>/ (the validation images moved into wnid folders)"
        )
    wnids = read_list(CLASS_LIST)
    for split_dir in (train_dir, test_dir):
        absent = [w for w in wnids if not (split_dir / w).is_dir()]
        if absent:
            raise DatasetError(
                f"ImageNet-100: {split_dir / absent[0]} not found ({len(absent)} of the 100 "
                f"class folders of {CLASS_LIST} are missing); set data.root to ImageNet or its "
                "seed-1993 100-class copy"
            )
    train, test = scan(train_dir, wnids), scan(test_dir, wnids)
    check_not_empty(train, test, wnids)
    others = len(class_dirs(train_dir)) - len(wnids)
    notes = (
        f"ImageNet-100 of UCIR (seed 1993, lists/{CLASS_LIST}): "
        f"{plural(len(wnids), 'class')}"
        + (f" of {others + len(wnids):,} class folders" if others else "")
        + f"; {plural(len(train), 'image file')} in {train_dir.name}, "
        f"{plural(len(test), 'image file')} in {test_dir.name}",
    )
    names = imagenet_names()
    return folder_splits(
        cfg,
        "imagenet100",
        root,
        [names[w] for w in wnids],
        train,
        test,
        head=f"{root}/{{{train_dir.name}, {test_dir.name}}}",
        notes=notes,
        log=logger,
    )
