"""ImageNet-R as LAMDA-PILOT and APER distribute it: ``train/<class>/`` and ``test/<class>/``."""

from __future__ import annotations

import logging

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, register_dataset
from cilkit.data.datasets._ptm import load_pilot_folder

logger = logging.getLogger(__name__)

NUM_CLASSES = 200
FOLDERS = ("imagenet-r",)
"""The benchmark's folder under ``data.root`` in PILOT and APER (``data.root`` may also be it)."""


@register_dataset("imagenet_r")
def load_imagenet_r(cfg: DataConfig) -> DatasetSplits:
    """ImageNet-R, 200 classes, in the train/test split of LAMDA-PILOT and APER.

    ImageNet-R (Hendrycks et al., "The Many Faces of Robustness", ICCV 2021): 30,000 renditions
    (art, cartoons, sketches, toys, ...) of 200 ImageNet classes. The PTM-CIL papers
    (DualPrompt, CODA-Prompt, APER, LAMDA-PILOT) split it 80/20 into ``train/<wnid>/`` (24,000
    images) and ``test/<wnid>/`` (6,000); PILOT reads ``data/imagenet-r/{train,test}`` with
    torchvision's ``ImageFolder`` (class ids = sorted wnids); APER's ``imagenetr_5_5`` configs
    use ``init_cls`` 5, ``increment`` 5.

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
    return load_pilot_folder(cfg, "imagenet_r", "ImageNet-R", NUM_CLASSES, FOLDERS, logger)
