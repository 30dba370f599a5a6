"""scikit-learn's bundled 8x8 handwritten digits (no download)."""

from __future__ import annotations

from importlib import resources

import numpy as np

from cilkit.config.schema import DataConfig
from cilkit.data.base import DatasetSplits, ImageSet, register_dataset
from cilkit.data.datasets._common import int64_labels, uint8_images
from cilkit.data.download import file_md5

TEST_FRACTION = 0.25
SPLIT_SEED = 0
CLASS_NAMES = tuple(str(d) for d in range(10))
DATA_PACKAGE, DATA_FILE = "sklearn.datasets.data", "digits.csv.gz"
"""Where scikit-learn's ``load_digits`` reads the bundled images from."""


def provenance() -> str:
    """The bundled file scikit-learn reads, its MD5, scikit-learn's version and the split."""
    import sklearn  # imported when used: it takes about a second

    path = resources.files(DATA_PACKAGE) / DATA_FILE
    md5 = file_md5(str(path)) if path.is_file() else "unknown"
    return (
        f"{path} (bundled with scikit-learn {sklearn.__version__}, MD5 {md5}; stratified "
        f"{1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} train/test split, seed {SPLIT_SEED})"
    )


@register_dataset("digits")
def load_digits(cfg: DataConfig) -> DatasetSplits:
    """8x8 greyscale handwritten digits bundled with scikit-learn (1,797 images, 10 classes).

    The 0..16 intensities become ``uint8`` via ``round(v * 255 / 16)``. The split is a fixed
    stratified 75/25 train/test split, identical on every call. ``cfg`` is not read: the data is
    bundled.

    Args:
        cfg: data config (unused).

    Returns:
        Train (1,347 images) and test (450 images) splits of shape ``(N, 1, 8, 8)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    del cfg
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=TEST_FRACTION,
        stratify=labels,
        random_state=SPLIT_SEED,
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    train_pixels = images[train_idx].astype(np.float64) / 255.0
    mean = (float(train_pixels.mean()),)
    std = (float(train_pixels.std()),)
    return DatasetSplits(
        name="digits",
        train=ImageSet(
            int64_labels(labels[train_idx]), CLASS_NAMES, uint8_images(images[train_idx])
        ),
        test=ImageSet(int64_labels(labels[test_idx]), CLASS_NAMES, uint8_images(images[test_idx])),
        preset="digits",
        mean=mean,
        std=std,
        root=None,
        provenance=provenance(),
    )
