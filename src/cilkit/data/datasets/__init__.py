"""Dataset adapters: importing this package registers every dataset in ``DATASETS``.

Each adapter reads one dataset's official layout from ``data.root`` (downloading it from the
official host where allowed) and returns :class:`~cilkit.data.base.DatasetSplits`.
"""

from __future__ import annotations

from cilkit.data.datasets.cifar import load_cifar10, load_cifar100
from cilkit.data.datasets.cub200 import load_cub200
from cilkit.data.datasets.digits import load_digits
from cilkit.data.datasets.fashion_mnist import load_fashion_mnist
from cilkit.data.datasets.imagefolder import load_imagefolder
from cilkit.data.datasets.imagenet100 import load_imagenet100
from cilkit.data.datasets.pilot import BENCHMARKS as PILOT_BENCHMARKS
from cilkit.data.datasets.tiny_imagenet import load_tiny_imagenet

__all__ = [
    "PILOT_BENCHMARKS",
    "load_cifar10",
    "load_cifar100",
    "load_cub200",
    "load_digits",
    "load_fashion_mnist",
    "load_imagefolder",
    "load_imagenet100",
    "load_tiny_imagenet",
]
