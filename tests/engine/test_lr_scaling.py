"""``train.lr_scaling``: one batch-size rule for every learning rate of a run, main training's
and every stage's, applied where the one loop builds its optimiser."""

from __future__ import annotations

import io
import json

import pytest

from cilkit.config import build_config
from cilkit.config.schema import TrainConfig
from cilkit.engine.trainer import Trainer
from cilkit.errors import ConfigError


@pytest.mark.parametrize(
    "rule, batch, expected",
    [("none", 512, 1.0), ("linear", 512, 4.0), ("sqrt", 512, 2.0), ("linear", 64, 0.5)],
)
def test_the_multiplier_follows_the_rule(rule, batch, expected):
    cfg = TrainConfig(batch_size=batch, lr_scaling=rule, lr_base_batch_size=128)
    assert cfg.lr_multiplier() == pytest.approx(expected)


def test_a_bad_base_batch_or_rule_is_a_one_line_error():
    with pytest.raises(ConfigError) as err:
        build_config({"train": {"lr_base_batch_size": 0}})
    assert str(err.value) == "train.lr_base_batch_size: must be >= 1"
    with pytest.raises(ConfigError) as err:
        build_config({"train": {"lr_scaling": "quadratic"}})
    assert str(err.value) == (
        "train.lr_scaling: 'quadratic' is not one of 'none' | 'linear' | 'sqrt'"
    )


def test_main_training_and_a_learners_stage_both_get_the_scaled_rate(tmp_path):
    cfg = build_config(
        {
            "data": {"name": "digits"},
            "scenario": {"initial_increment": 5, "increment": 5},
            "backbone": {"name": "convnet4", "hidden": 8},
            "learner": {"name": "eeil", "finetune_epochs": 1, "finetune_lr": 0.01},
            "memory": {"memory_size": 40},
            "optim": {"lr": 0.05, "scheduler": "constant"},
            "train": {
                "epochs": 1,
                "batch_size": 256,
                "lr_scaling": "linear",
                "lr_base_batch_size": 64,
            },
            "engine": {"progress": "none"},
        }
    )
    Trainer(cfg, tmp_path / "run", log=io.StringIO()).fit()
    records = [json.loads(x) for x in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    train = [r["lr"] for r in records if r["phase"] == "train"]
    stage = [r["lr"] for r in records if r["phase"] != "train"]
    assert len(train) == 2 and train == pytest.approx([0.2, 0.2])
    assert stage == pytest.approx([0.04])  # EEIL's balanced finetuning, 0.01 x 256 / 64
