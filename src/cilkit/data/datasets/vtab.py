"""VTAB as LAMDA-PILOT and APER distribute it: ``train/<class>/`` and ``test/<class>/``."""

from __future__ import annotations

import logging

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, register_dataset
from cilkit.data.datasets._ptm import load_pilot_folder

logger = logging.getLogger(__name__)

NUM_CLASSES = 50
FOLDERS = ("vtab", "vtab-cil/vtab")
"""The benchmark's folder under ``data.root`` in PILOT and APER (``data.root`` may also be it)."""


@register_dataset("vtab")
def load_vtab(cfg: DataConfig) -> DatasetSplits:
    """VTAB, the 5-domain 50-class benchmark of APER and LAMDA-PILOT, in their split.

    VTAB (Zhai et al., 2019) gathers many visual tasks; APER (Zhou et al., IJCV 2024) takes 10
    classes from each of five of its datasets (Resisc45, DTD, Pets, EuroSAT, Flowers) as
    ``train/<class>/`` and ``test/<class>/`` (their ``vtab.zip``); PILOT reads
    ``data/vtab-cil/vtab/{train,test}`` (RevisitingCIL ``data/vtab/``) with torchvision's
    ``ImageFolder`` (class ids = sorted folder names). APER's ``vtab_10_10`` configs run it B10
    Inc10 with ``shuffle: false`` (the sorted class order, unlike its other benchmarks): use
    ``scenario.class_order_seed: null`` to keep that order.

    Reads ``data.root/{train,test}/<class>/<image>`` (or under ``data.root/<FOLDERS[i]>/``);
    a folder with another number of classes than 50, or without its test split, is an
    error. Class names are the folder names (ImageNet wnids as their names). Decoded, cached and
    checked against ``data.manifest`` as image folders are (see
    :func:`cilkit.data.datasets._folder.folder_splits`).

    Args:
        cfg: data config.

    Returns:
        Train and test splits of ``(3, S, S)`` images, 50 classes.
    """
    return load_pilot_folder(cfg, "vtab", "VTAB", NUM_CLASSES, FOLDERS, logger)
