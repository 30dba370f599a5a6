"""Building a run from its config: the dataset, the scenario, the device splits, the network and
the learner (:func:`build_run`)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cilkit.backbones import Backbone, create_backbone, create_network
from cilkit.backbones.weights import WeightsError, load_network_weights
from cilkit.config import ExperimentConfig
from cilkit.config.source import ConfigSource
from cilkit.config.validate import validate_experiment
from cilkit.data.base import DatasetSplits, create_dataset
from cilkit.data.manifest import attach_manifest
from cilkit.data.transforms import BatchTransform, resolve_preset
from cilkit.engine.data import DeviceSplit
from cilkit.engine.distributed import Distributed
from cilkit.engine.runtime import resolve_device, seed_everything
from cilkit.errors import ConfigError
from cilkit.learners import LEARNERS, Learner, create_learner
from cilkit.scenarios import ClassIncremental, resolve_class_order
from cilkit.scenarios.long_tail import apply_long_tail


@dataclass
class RunParts:
    """Everything built from the config before the first task.

    Attributes:
        dataset: the loaded dataset (long-tailed if the scenario says so).
        train_scenario: the training split's tasks.
        test_scenario: the test split's tasks.
        train: the training split on the device.
        test: the test split on the device.
        learner: the learner, with its network.
        device: the training device.
    """

    dataset: DatasetSplits
    train_scenario: ClassIncremental
    test_scenario: ClassIncremental
    train: DeviceSplit
    test: DeviceSplit
    learner: Learner
    device: torch.device

    @property
    def train_counts(self) -> torch.Tensor:
        """Training images of each remapped class."""
        return torch.bincount(
            self.train_scenario.targets, minlength=self.train_scenario.num_classes
        )


def build_run(
    cfg: ExperimentConfig,
    source: ConfigSource | str | None = None,
    dist: Distributed | None = None,
    load_weights: bool = True,
) -> RunParts:
    """Load the data and build the scenario, the network and the learner.

    Args:
        cfg: the resolved experiment config.
        source: where the config came from, for error messages.
        dist: this process's place in a torchrun job (one process when None).
        load_weights: load ``backbone.weights`` into the network (False when a checkpoint
            replaces every weight anyway).
    """
    source = ConfigSource.of(source)
    dist = dist or Distributed()
    seed_everything(cfg.seed, cfg.engine.deterministic)
    if cfg.engine.num_threads:
        torch.set_num_threads(cfg.engine.num_threads)
    device = resolve_device(cfg.engine, dist.local_rank if dist.world_size > 1 else None)
    dist.init(device)
    dataset = attach_manifest(cfg.data, create_dataset(cfg.data))  # checks data.manifest
    validate_experiment(cfg, dataset.num_classes, source)
    if cfg.scenario.long_tail is not None:
        try:
            lt_train, _ = apply_long_tail(dataset.train, cfg.scenario.long_tail)
        except ValueError as err:
            raise source.error("scenario.long_tail", str(err)) from None
        dataset = dataclasses.replace(dataset, train=lt_train)
    sc = cfg.scenario
    order = resolve_class_order(dataset.num_classes, sc.class_order, sc.class_order_seed)
    train_scn = ClassIncremental(dataset.train, sc.increment, sc.initial_increment, order)
    test_scn = ClassIncremental(dataset.test, sc.increment, sc.initial_increment, order)
    channels = dataset.train.image_shape[0]
    head = cfg.backbone.head or LEARNERS.get(cfg.learner.name).obj.head
    network = create_network(cfg.backbone, channels, head=head)
    transform = model_transform(cfg, dataset, network.backbone, source)
    kw = {
        "num_workers": cfg.train.num_workers,
        "on_unreadable": cfg.data.on_unreadable,
        "rank": dist.rank,
        "world_size": dist.world_size,
    }
    train = DeviceSplit(dataset.train, train_scn.targets, transform, device, **kw)
    test = DeviceSplit(dataset.test, test_scn.targets, transform, device, **kw)
    if cfg.backbone.weights and load_weights:
        try:
            load_network_weights(
                network,
                cfg.backbone.weights,
                cfg.backbone.weights_strict,
                dataset.num_classes,
                order,
            )
        except WeightsError as err:
            raise source.error("backbone.weights", str(err)) from None
    build_backbone = functools.partial(create_backbone, cfg.backbone, channels)
    if cfg.engine.compile:
        # In place, so parameter names (and checkpoints) are unchanged. Every extractor a
        # method builds later (added branches, a distilled student) comes from
        # build_backbone and is compiled too; split_backbone keeps both parts compiled.
        network.backbone.compile()
        build_backbone = functools.partial(_compiled_backbone, build_backbone)
    learner = create_learner(cfg.learner, network, cfg.memory, build_backbone)
    return RunParts(dataset, train_scn, test_scn, train, test, learner, device)


def model_transform(
    cfg: ExperimentConfig,
    dataset: DatasetSplits,
    backbone: Backbone,
    source: ConfigSource | None = None,
) -> BatchTransform:
    """The device-side preprocessing of a run: the backbone's own input size, interpolation,
    crop share and statistics (``backbone.data_config``, a timm model's data config) where it
    has them, else the dataset's; ``data.input_size``, ``data.crop_pct``, ``data.mean`` and
    ``data.std`` override both. A backbone with a data config trains with the ``ptm`` preset unless
    ``data.augment.preset`` names another."""
    source = ConfigSource.of(source)
    model = getattr(backbone, "data_config", None) or {}
    mean = cfg.data.mean or model.get("mean") or dataset.mean
    std = cfg.data.std or model.get("std") or dataset.std
    channels = dataset.train.image_shape[0]
    for key, values in (("data.mean", mean), ("data.std", std)):
        if len(values) != channels:
            raise source.error(key, f"{len(values)} values for {channels}-channel images")
    preset = "ptm" if model and not cfg.data.augment.preset else dataset.preset
    try:
        return BatchTransform(
            tuple(mean),
            tuple(std),
            resolve_preset(preset, cfg.data.augment),
            channels_last=cfg.engine.channels_last,
            input_size=cfg.data.input_size or model.get("input_size"),
            interpolation=model.get("interpolation", "bilinear"),
            crop_pct=cfg.data.crop_pct or model.get("crop_pct", 1.0),
        )
    except ConfigError as err:
        raise source.error("backbone", str(err)) from None


def _compiled_backbone(build: Callable[[], Backbone]) -> Backbone:
    backbone = build()
    backbone.compile()
    return backbone


def to_device(learner: Learner, device: torch.device, channels_last: bool) -> None:
    """Move the learner to ``device`` (and its 4-D tensors, the convolutions', to channels-last
    memory layout when asked; ``Module.to(memory_format=...)`` would also reach 5-D tensors,
    such as a prompt method's per-task prefixes, and refuse them)."""
    learner.to(device)
    if channels_last:
        learner._apply(_channels_last_4d)


def _channels_last_4d(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
