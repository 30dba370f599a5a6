"""ObjectNet as LAMDA-PILOT and APER distribute it: ``train/<class>/`` and ``test/<class>/``."""

from __future__ import annotations

import logging

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, register_dataset
from cilkit.data.datasets._ptm import load_pilot_folder

logger = logging.getLogger(__name__)

NUM_CLASSES = 200
FOLDERS = ("objectnet", "objnet")
"""The benchmark's folder under ``data.root`` in PILOT and APER (``data.root`` may also be it)."""


@register_dataset("objectnet")
def load_objectnet(cfg: DataConfig) -> DatasetSplits:
    """ObjectNet, the 200-class subset of APER and LAMDA-PILOT, in their train/test split.

    ObjectNet (Barbu et al., NeurIPS 2019) photographs objects at unusual poses, backgrounds and
    viewpoints (313 classes). APER (Zhou et al., IJCV 2024) keeps 200 of its classes and splits
    them into ``train/<class>/`` and ``test/<class>/`` (their ``objnet.tgz``, or the file list
    linked from the RevisitingCIL README); PILOT reads ``data/objectnet/{train,test}`` with
    torchvision's ``ImageFolder`` (class ids = sorted folder names); APER's configs use B10
    Inc10.

    Reads ``data.root/{train,test}/<class>/<image>`` (or under ``data.root/<FOLDERS[i]>/``);
    a folder with another number of classes than 200, or without its test split, is an
    error. Class names are the folder names (ImageNet wnids as their names). Decoded, cached and
    checked against ``data.manifest`` as image folders are (see
    :func:`cilkit.data.datasets._folder.folder_splits`).

    Args:
        cfg: data config.

    Returns:
        Train and test splits of ``(3, S, S)`` images, 200 classes.
    """
    return load_pilot_folder(cfg, "objectnet", "ObjectNet", NUM_CLASSES, FOLDERS, logger)
