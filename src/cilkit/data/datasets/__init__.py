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
from cilkit.data.datasets.imagenet_a import load_imagenet_a
from cilkit.data.datasets.imagenet_r import load_imagenet_r
from cilkit.data.datasets.objectnet import load_objectnet
from cilkit.data.datasets.omnibenchmark import load_omnibenchmark
from cilkit.data.datasets.tiny_imagenet import load_tiny_imagenet
from cilkit.data.datasets.vtab import load_vtab

__all__ = [
    "load_cifar10",
    "load_cifar100",
    "load_cub200",
    "load_digits",
    "load_fashion_mnist",
    "load_imagefolder",
    "load_imagenet100",
    "load_imagenet_a",
    "load_imagenet_r",
    "load_objectnet",
    "load_omnibenchmark",
    "load_tiny_imagenet",
    "load_vtab",
]
