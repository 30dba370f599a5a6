"""OmniBenchmark as LAMDA-PILOT and APER distribute it: ``train/<class>/`` and ``test/<class>/``."""

from __future__ import annotations

import logging

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, register_dataset
from cilkit.data.datasets._ptm import load_pilot_folder

logger = logging.getLogger(__name__)

NUM_CLASSES = 300
FOLDERS = ("omnibenchmark",)
"""The benchmark's folder under ``data.root`` in PILOT and APER (``data.root`` may also be it)."""


@register_dataset("omnibenchmark")
def load_omnibenchmark(cfg: DataConfig) -> DatasetSplits:
    """OmniBenchmark, the 300-class subset of APER and LAMDA-PILOT, in their train/test split.

    OmniBenchmark (Zhang et al., "Benchmarking Omni-Vision Representation through the Lens of
    Visual Realms", ECCV 2022) spans 21 semantic realms. APER (Zhou et al., IJCV 2024) keeps 300
    of its categories as ``train/<class>/`` and ``test/<class>/`` (their
    ``omnibenchmark.zip``); PILOT reads ``data/omnibenchmark/{train,test}`` with torchvision's
    ``ImageFolder`` (class ids = sorted folder names); APER's configs use B30 Inc30.

    Reads ``data.root/{train,test}/<class>/<image>`` (or under ``data.root/<FOLDERS[i]>/``);
    a folder with another number of classes than 300, or without its test split, is an
    error. Class names are the folder names (ImageNet wnids as their names). Decoded, cached and
    checked against ``data.manifest`` as image folders are (see
    :func:`cilkit.data.datasets._folder.folder_splits`).

    Args:
        cfg: data config.

    Returns:
        Train and test splits of ``(3, S, S)`` images, 300 classes.
    """
    return load_pilot_folder(cfg, "omnibenchmark", "OmniBenchmark", NUM_CLASSES, FOLDERS, logger)
