"""A head-only stage on a frozen network reads cached features (``TrainingStage.features``):
each image's features once, not once per epoch, and the same training as recomputing them."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from counting import CountingTrainer

from cilkit.backbones import Frozen
from cilkit.config import build_config
from cilkit.contract import StepOutput, TrainingStage
from cilkit.learners import LEARNERS


def _probe_stages(cached: bool, epochs: int = 3):
    """A finetune whose tasks train only a linear probe on the frozen backbone, in a stage."""

    def stages(self, ctx, when):
        if when != "after_training":
            return []
        frozen = Frozen(self.network.backbone)  # the same modules, kept in eval mode

        def step(batch):
            if cached:
                feats = batch.extra["features"]
            else:  # the loop put the learner (the wrapped backbone too) in train mode
                frozen.module.eval()
                with torch.no_grad():
                    feats = frozen(batch.x)
            logits = self.network.forward_head(feats)
            loss = F.cross_entropy(logits, batch.y)
            return StepOutput(loss, {"probe": loss.detach()}, logits)

        return [
            TrainingStage(
                "probe",
                list(self.network.head.parameters()),
                epochs,
                self.cfg_optim,
                step,
                indices=ctx.new_indices(),
                when="after_training",
                augment=False,
                features=frozen if cached else None,
            )
        ]

    return stages


def _config():
    return build_config(
        {
            "seed": 2,
            "data": {"name": "digits"},
            "scenario": {"initial_increment": 5, "increment": 5},
            "backbone": {"name": "convnet4", "hidden": 32},
            "learner": {"name": "finetune"},
            "optim": {"lr": 0.2},
            "train": {"epochs": 0, "batch_size": 64},
            "engine": {"progress": "none"},
        }
    )


@pytest.mark.parametrize("cached", [True, False])
def test_a_probe_stage_reads_each_image_once(cached, tmp_path, monkeypatch):
    cls = LEARNERS.get("finetune").obj
    monkeypatch.setattr(cls, "stages", _probe_stages(cached), raising=False)
    cfg = _config()
    monkeypatch.setattr(cls, "cfg_optim", cfg.optim, raising=False)
    trainer = CountingTrainer(cfg, tmp_path / "run", log=None)
    summary = trainer.fit()
    scenario = trainer.parts.train_scenario
    images = sum(len(scenario[t].indices) for t in range(scenario.num_tasks))
    evaluated = sum(len(trainer.parts.test_scenario[: t + 1].indices) for t in range(2))
    training_passes = trainer.images - evaluated
    # full batches only: the loop drops a last batch of fewer than 2 images
    assert training_passes == (images if cached else pytest.approx(3 * images, abs=6))
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["accuracy"] > 30  # the probe learned on the random network (chance: 20)
    assert summary["last_accuracy"] is not None


def test_both_ways_train_the_same_probe(tmp_path, monkeypatch):
    cls = LEARNERS.get("finetune").obj
    heads = []
    for cached in (True, False):
        monkeypatch.setattr(cls, "stages", _probe_stages(cached), raising=False)
        cfg = _config()
        monkeypatch.setattr(cls, "cfg_optim", cfg.optim, raising=False)
        trainer = CountingTrainer(cfg, tmp_path / f"run-{cached}", log=None)
        trainer.fit()
        heads.append(trainer.parts.learner.network.head.weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1], rtol=1e-4, atol=1e-5)


def test_cached_features_need_an_unaugmented_stage():
    with pytest.raises(ValueError, match="cached features need augment=False"):
        TrainingStage("x", [], 1, _config().optim, lambda b: None, features=torch.nn.Identity())
