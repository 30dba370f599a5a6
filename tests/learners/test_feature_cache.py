"""The engine's frozen-feature cache at evaluation: the same results with and without it, for
every learner that classifies a frozen extractor's features (generated from the registry), and
one backbone pass per image over a whole run."""

from __future__ import annotations

import json

import pytest
from counting import CountingTrainer
from fast_options import fast_overrides

from cilkit.config import build_config
from cilkit.data.base import create_dataset
from cilkit.learners import LEARNERS, Learner


def _classifies_features(name: str) -> bool:
    cls = LEARNERS.get(name).obj
    return cls.evaluation_extractor is not Learner.evaluation_extractor


FEATURE_LEARNERS = [n for n in LEARNERS.names() if _classifies_features(n)]


def _config(name: str, *overrides: str):
    data = {
        "seed": 5,
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 4, "increment": 3},
        "backbone": {"name": "convnet4", "hidden": 16},
        "learner": {"name": name},
        "optim": {"lr": 0.05},
        "train": {"epochs": 2, "batch_size": 128, "eval_batch_size": 100},
        "engine": {"progress": "none"},
    }
    return build_config(data, [*fast_overrides(name), *overrides])


def results(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "train_seconds"}


def test_the_feature_learners_are_found():
    assert {"simplecil", "ranpac", "fecam", "acil", "dsal"} <= set(FEATURE_LEARNERS)


@pytest.mark.parametrize("name", FEATURE_LEARNERS)
def test_cache_on_and_off_give_identical_results(name, tmp_path):
    """Bit-identical metrics with ``engine.feature_cache`` on and off: the engine computes the
    same per-task blocks either way; the cache only skips recomputing them."""
    on = CountingTrainer(_config(name), tmp_path / "on", log=None)
    off = CountingTrainer(_config(name, "engine.feature_cache=false"), tmp_path / "off", log=None)
    summary_on, summary_off = on.fit(), off.fit()
    assert results(summary_on) == results(summary_off)
    assert on.images < off.images  # the cache skipped passes (3 tasks: tasks 1-2 re-evaluated)
    records = [_records(tmp_path / d) for d in ("on", "off")]
    assert records[0] == records[1]  # every task's metrics, not only the summary


def _records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]


def test_one_backbone_pass_per_image_over_a_ten_task_simplecil_run(tmp_path):
    """A 10-task SimpleCIL run: each training image once (its class prototype) and each test
    image once (cached from its first evaluation on), not once per test image per task."""
    cfg = _config(
        "simplecil",
        "scenario.initial_increment=1",
        "scenario.increment=1",
        "data.augment.flip=false",
    )
    data = create_dataset(cfg.data)
    trainer = CountingTrainer(cfg, tmp_path / "on", log=None)
    trainer.fit()
    assert trainer.images == len(data.train) + len(data.test)
    uncached = CountingTrainer(
        _config(
            "simplecil",
            "scenario.initial_increment=1",
            "scenario.increment=1",
            "data.augment.flip=false",
            "engine.feature_cache=false",
        ),
        tmp_path / "off",
        log=None,
    )
    uncached.fit()
    test = uncached.parts.test_scenario
    every_evaluation = sum(len(test[: t + 1].indices) for t in range(test.num_tasks))
    assert uncached.images == len(data.train) + every_evaluation
    assert results(json.loads((tmp_path / "on" / "summary.json").read_text())) == results(
        json.loads((tmp_path / "off" / "summary.json").read_text())
    )


def test_a_growing_ensemble_runs_only_its_new_branch_over_old_test_images(tmp_path):
    """EASE adds an adapter branch per task: with the cache, evaluation ``t`` runs every branch
    over task ``t``'s new test images and only the new branch over the older ones; without it,
    every branch over every seen image. Training passes are the same in both runs."""
    on = CountingTrainer(_config("ease"), tmp_path / "on", log=None)
    off = CountingTrainer(_config("ease", "engine.feature_cache=false"), tmp_path / "off", log=None)
    on.fit(), off.fit()
    test = on.parts.test_scenario
    seen = [len(test[: t + 1].indices) for t in range(test.num_tasks)]
    # branches t+1 over the seen images, minus what the cache kept: t old branches x old images
    saved = sum(t * seen[t - 1] for t in range(1, test.num_tasks))
    assert off.images - on.images == saved > 0
