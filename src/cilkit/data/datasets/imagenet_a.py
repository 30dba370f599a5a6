"""ImageNet-A as LAMDA-PILOT and APER distribute it: ``train/<class>/`` and ``test/<class>/``."""

from __future__ import annotations

import logging

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, register_dataset
from cilkit.data.datasets._ptm import load_pilot_folder

logger = logging.getLogger(__name__)

NUM_CLASSES = 200
FOLDERS = ("imagenet-a", "ina")
"""The benchmark's folder under ``data.root`` in PILOT and APER (``data.root`` may also be it)."""


@register_dataset("imagenet_a")
def load_imagenet_a(cfg: DataConfig) -> DatasetSplits:
    """ImageNet-A, 200 classes, in the train/test split of APER and LAMDA-PILOT.

    ImageNet-A (Hendrycks et al., "Natural Adversarial Examples", CVPR 2021): 7,500 natural
    images of 200 ImageNet classes that ResNet-50 gets wrong. APER (Zhou et al., IJCV 2024)
    proposed it as a PTM-CIL benchmark and split it into ``train/<wnid>/`` and
    ``test/<wnid>/`` (their ``ina.zip``); PILOT reads ``data/imagenet-a/{train,test}`` with
    torchvision's ``ImageFolder`` (class ids = sorted wnids); APER's configs use B10 Inc10.

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
    return load_pilot_folder(cfg, "imagenet_a", "ImageNet-A", NUM_CLASSES, FOLDERS, logger)
