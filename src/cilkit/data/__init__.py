"""Datasets (registered adapters), batched augmentation.

Importing any part of this package fills the dataset registry: ``from cilkit.data.base import
DATASETS`` gives every adapter.
"""

from cilkit.data import datasets as _datasets  # noqa: F401  (registers the adapters)
from cilkit.data.base import DATASETS, DatasetSplits, ImageSet, create_dataset

__all__ = ["DATASETS", "DatasetSplits", "ImageSet", "create_dataset"]
