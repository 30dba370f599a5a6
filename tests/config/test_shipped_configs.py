"""Every shipped YAML config loads and validates against its dataset's class count."""

from __future__ import annotations

from pathlib import Path

import pytest

from cilkit.config import load_config
from cilkit.config.validate import validate_experiment

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
NUM_CLASSES = {
    "cifar100": 100,
    "imagefolder": 100,
    "cifar10": 10,
    "digits": 10,
    "fashion_mnist": 10,
    "tiny_imagenet": 100,
    "imagenet100": 100,
    "cub200": 200,
    "imagenet_r": 200,
    "imagenet_a": 200,
    "objectnet": 200,
    "omnibenchmark": 300,
    "vtab": 50,
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    cfg = load_config(path)
    validate_experiment(cfg, NUM_CLASSES[cfg.data.name], str(path))
    assert cfg.name == path.stem


def test_published_protocol_values():
    cfg = load_config(CONFIG_DIR / "experiments" / "icarl_cifar100_b0_inc10.yaml")
    assert cfg.memory.memory_size == 2000 and cfg.memory.selection == "herding"
    assert cfg.scenario.class_order_seed == 1993 and cfg.backbone.name == "resnet32"
    assert cfg.train.init_epochs == 200 and cfg.train.epochs == 170
    assert cfg.optim.init_milestones == (60, 120, 170) and cfg.optim.milestones == (80, 120)
    assert cfg.optim.weight_decay == 2e-4 and cfg.optim.init_weight_decay == 5e-4


def test_lt_cil_protocols():
    lt = CONFIG_DIR / "lt"
    ordered = load_config(lt / "cifar100_lt_ordered_b50_10tasks_icarl_lws.yaml")
    shuffled = load_config(lt / "cifar100_lt_shuffled_b50_5tasks_wa.yaml")
    assert ordered.scenario.class_order_seed is None and shuffled.scenario.class_order_seed == 1993
    assert ordered.scenario.increment == 5 and shuffled.scenario.increment == 10
    assert ordered.scenario.long_tail.imb_factor == 100 and ordered.memory.memory_per_class == 20
    assert ordered.learner.rebalance.method == "lws" and ordered.learner.rebalance.epochs == 30
    assert shuffled.train.epochs == 160 and shuffled.optim.milestones == (80, 120)
    assert shuffled.optim.weight_decay == 5e-4 and shuffled.learner.rebalance is None
