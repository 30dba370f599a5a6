"""The PTM-CIL benchmarks that LAMDA-PILOT and APER distribute as ``train/<class>/`` and
``test/<class>/`` folders: ImageNet-R, ImageNet-A, ObjectNet, OmniBenchmark and VTAB.

They differ only in their class count, their folder's names and their provenance, so each is
one :class:`PilotBenchmark` row below and the loader is shared
(:func:`~cilkit.data.datasets._ptm.load_pilot_folder`): it reads
``data.root/{train,test}/<class>/<image>`` (or the same under ``data.root/<folder>/``), refuses a
folder with another number of classes or without its test split, names classes after their
folders (ImageNet wnids by their ImageNet names), and decodes, caches and checks the images
against ``data.manifest`` as image folders are (:func:`cilkit.data.datasets._folder.folder_splits`).
Class ids follow the sorted folder names, as torchvision's ``ImageFolder`` in PILOT and APER.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, register_dataset
from cilkit.data.datasets._ptm import load_pilot_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PilotBenchmark:
    """One benchmark: its registry name, title, class count, folder names under ``data.root``
    in PILOT and APER, and where its split comes from (the loader's docstring)."""

    name: str
    title: str
    num_classes: int
    folders: tuple[str, ...]
    about: str


BENCHMARKS = (
    PilotBenchmark(
        "imagenet_r",
        "ImageNet-R",
        200,
        ("imagenet-r",),
        """ImageNet-R, 200 classes, in the train/test split of LAMDA-PILOT and APER.

    ImageNet-R (Hendrycks et al., "The Many Faces of Robustness", ICCV 2021): 30,000 renditions
    (art, cartoons, sketches, toys, ...) of 200 ImageNet classes. The PTM-CIL papers
    (DualPrompt, CODA-Prompt, APER, LAMDA-PILOT) split it 80/20 into ``train/<wnid>/`` (24,000
    images) and ``test/<wnid>/`` (6,000); PILOT reads ``data/imagenet-r/{train,test}``; APER's
    ``imagenetr_5_5`` configs use ``init_cls`` 5, ``increment`` 5.""",
    ),
    PilotBenchmark(
        "imagenet_a",
        "ImageNet-A",
        200,
        ("imagenet-a", "ina"),
        """ImageNet-A, 200 classes, in the train/test split of APER and LAMDA-PILOT.

    ImageNet-A (Hendrycks et al., "Natural Adversarial Examples", CVPR 2021): 7,500 natural
    images of 200 ImageNet classes that ResNet-50 gets wrong. APER (Zhou et al., IJCV 2024)
    proposed it as a PTM-CIL benchmark and split it into ``train/<wnid>/`` and
    ``test/<wnid>/`` (their ``ina.zip``); PILOT reads ``data/imagenet-a/{train,test}``; APER's
    configs use B10 Inc10.""",
    ),
    PilotBenchmark(
        "objectnet",
        "ObjectNet",
        200,
        ("objectnet", "objnet"),
        """ObjectNet, the 200-class subset of APER and LAMDA-PILOT, in their train/test split.

    ObjectNet (Barbu et al., NeurIPS 2019) photographs objects at unusual poses, backgrounds and
    viewpoints (313 classes). APER (Zhou et al., IJCV 2024) keeps 200 of its classes and splits
    them into ``train/<class>/`` and ``test/<class>/`` (their ``objnet.tgz``, or the file list
    linked from the RevisitingCIL README); PILOT reads ``data/objectnet/{train,test}``; APER's
    configs use B10 Inc10.""",
    ),
    PilotBenchmark(
        "omnibenchmark",
        "OmniBenchmark",
        300,
        ("omnibenchmark",),
        """OmniBenchmark, the 300-class subset of APER and LAMDA-PILOT, in their train/test split.

    OmniBenchmark (Zhang et al., "Benchmarking Omni-Vision Representation through the Lens of
    Visual Realms", ECCV 2022) spans 21 semantic realms. APER (Zhou et al., IJCV 2024) keeps 300
    of its categories as ``train/<class>/`` and ``test/<class>/`` (their
    ``omnibenchmark.zip``); PILOT reads ``data/omnibenchmark/{train,test}``; APER's configs use
    B30 Inc30.""",
    ),
    PilotBenchmark(
        "vtab",
        "VTAB",
        50,
        ("vtab", "vtab-cil/vtab"),
        """VTAB, the 5-domain 50-class benchmark of APER and LAMDA-PILOT, in their split.

    VTAB (Zhai et al., 2019) gathers many visual tasks; APER (Zhou et al., IJCV 2024) takes 10
    classes from each of five of its datasets (Resisc45, DTD, Pets, EuroSAT, Flowers) as
    ``train/<class>/`` and ``test/<class>/`` (their ``vtab.zip``); PILOT reads
    ``data/vtab-cil/vtab/{train,test}`` (RevisitingCIL ``data/vtab/``). APER's ``vtab_10_10``
    configs run it B10 Inc10 with ``shuffle: false`` (the sorted class order, unlike its other
    benchmarks): use ``scenario.class_order_seed: null`` to keep that order.""",
    ),
)


def _loader(spec: PilotBenchmark):
    def load(cfg: DataConfig) -> DatasetSplits:
        return load_pilot_folder(cfg, spec.name, spec.title, spec.num_classes, spec.folders, logger)

    load.__name__ = load.__qualname__ = f"load_{spec.name}"
    folders = ", ".join(f"``{f}/``" for f in spec.folders)
    load.__doc__ = (
        f"{spec.about}\n\n    Reads ``data.root/{{train,test}}/<class>/<image>``, or the same "
        f"under {folders}; {spec.num_classes} classes (see this module's docstring).\n    "
    )
    return load


for _spec in BENCHMARKS:
    register_dataset(_spec.name)(_loader(_spec))
