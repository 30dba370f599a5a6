"""Two-stage rebalancing: the balanced stage changes only the classifier's per-class scaling."""

from __future__ import annotations

import pytest
import torch

from cilkit.config import build_config
from cilkit.engine.checkpoint import latest_checkpoint, load_checkpoint
from cilkit.engine.trainer import Trainer


def cfg(*overrides: str):
    data = {
        "seed": 3,
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 5, "increment": 5},
        "backbone": {"name": "convnet4", "hidden": 16},
        "learner": {"name": "icarl"},
        "memory": {"memory_size": 50},
        "train": {"epochs": 2},
        "engine": {"progress": "none"},
    }
    return build_config(data, list(overrides))


def _learner_state(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["learner"]


@pytest.mark.parametrize("learner", ["icarl", "wa"])
def test_lws_stage_changes_only_the_class_scaling(tmp_path, learner):
    lws = Trainer(
        cfg(f"learner.name={learner}", "learner.rebalance={method: lws, epochs: 3}"),
        tmp_path / "lws",
        log=None,
    )
    lws.fit(stop_after_task=0)
    plain = Trainer(cfg(f"learner.name={learner}"), tmp_path / "plain", log=None)
    plain.fit(stop_after_task=0)
    a, b = _learner_state(tmp_path / "plain"), _learner_state(tmp_path / "lws")
    assert set(a) == set(b)
    scale = b["network.head.bias"] / a["network.head.bias"]
    assert not torch.allclose(scale, torch.ones(5))  # a scaling was learned ...
    assert torch.allclose(b["network.head.weight"], a["network.head.weight"] * scale[:, None])
    for key in a:  # ... and nothing else changed
        if key.startswith(("_extra_state", "loss_fn", "network.head.weight", "network.head.bias")):
            continue
        assert torch.equal(a[key], b[key]), key


def test_lws_with_cosine_head_uses_class_scale(tmp_path):
    c = cfg("backbone.head=cosine", "learner.rebalance={method: lws, epochs: 2}")
    Trainer(c, tmp_path, log=None).fit(stop_after_task=0)
    state = _learner_state(tmp_path)
    assert not torch.equal(state["network.head.class_scale"], torch.ones(5))


def test_crt_retrains_the_classifier_only(tmp_path):
    base = Trainer(cfg(), tmp_path / "a", log=None)
    base.fit(stop_after_task=0)
    crt = Trainer(cfg("learner.rebalance={method: crt, epochs: 2}"), tmp_path / "b", log=None)
    crt.fit(stop_after_task=0)
    a, b = _learner_state(tmp_path / "a"), _learner_state(tmp_path / "b")
    changed = {k for k in a if isinstance(a[k], torch.Tensor) and not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith("network.head.") for k in changed)


def test_rebalanced_run_resumes_exactly(tmp_path):
    c = cfg("learner.rebalance={method: lws, epochs: 2}")
    full = Trainer(c, tmp_path / "full", log=None).fit()
    Trainer(c, tmp_path / "part", log=None).fit(stop_after_task=0)
    resumed = Trainer(c, tmp_path / "part", log=None).fit(resume=True)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
