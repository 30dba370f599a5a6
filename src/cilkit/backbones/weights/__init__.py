"""Trained weights from elsewhere: ``backbone.weights: PATH`` and ``cilkit import-weights``.

A state dict saved by another toolbox is read safely, its key layout is recognised, its tensors
are renamed onto cilkit's and loaded into a cilkit network, with one readable report of what did
not fit. One module per job: :mod:`.files` reads a file safely (and writes cilkit's own),
:mod:`.mapping` recognises the key layout and renames, :mod:`.apply` loads into a network.

Key layouts recognised (tried together; the one matching most keys with equal shapes wins):

* a ``module.`` prefix (``nn.DataParallel`` / DDP), then a ``convnet.``, ``backbone.``,
  ``encoder.`` or ``model.`` prefix on the feature extractor (PyCIL keeps its extractor under
  ``convnet.``; cilkit's own networks under ``backbone.``);
* the classifier under ``fc.``, ``linear.``, ``classifier.`` or ``head.`` (``weight`` and
  ``bias``), outside the extractor's prefix;
* torchvision's ResNet names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample``) and PyCIL's
  CIFAR ResNet-18 stem (``conv1.0``, ``conv1.1``) onto cilkit's ``resnet18``/``resnet34``
  (``stem.0``, ``stem.1``, ``stages.0.0.conv1``, ``shortcut``);
* PyCIL's CIFAR ResNets (``convs/cifar_resnet.py``: ``conv_1_3x3``, ``bn_1``,
  ``stage_1.0.conv_a``/``bn_a``/``conv_b``/``bn_b``) onto cilkit's ``resnet20/32/56``. PyCIL's
  extractor also holds an unused ``fc`` (10 classes); it is listed as ignored.
* cilkit's own names, unchanged.

A load is complete when every backbone tensor of the cilkit network is found with its shape
(``num_batches_tracked`` excepted). Otherwise it is refused, with the missing and shape-mismatched
keys listed, unless ``backbone.weights_strict: false`` (``--allow-partial`` for
``cilkit import-weights``); keys of the file that match nothing are listed as ignored and never
stop a load.

The classifier rows are used only when the file's classifier has one row per class of the
dataset (``num_classes x feature width``, indexed by the dataset's original class ids, as a model
trained on the whole dataset has them) and the head is a linear head with a bias: they are then
reordered into the scenario's class order and fill the head's rows at its first growth (the first
task's classes) in ``cilkit run``, or all seen classes in ``cilkit tune --weights``. Otherwise the
head is skipped (it starts fresh) and the report says why.
"""

from cilkit.backbones.weights.apply import (
    fill_head,
    head_rows,
    load_backbone_weights,
    load_network_weights,
    preload_head,
)
from cilkit.backbones.weights.files import WeightsError, read_state_dict, save_weights
from cilkit.backbones.weights.mapping import LAYOUTS, MappedWeights, map_state_dict

__all__ = [
    "LAYOUTS",
    "MappedWeights",
    "WeightsError",
    "fill_head",
    "head_rows",
    "load_backbone_weights",
    "load_network_weights",
    "map_state_dict",
    "preload_head",
    "read_state_dict",
    "save_weights",
]
