"""Two-stage rebalancing: Liu et al.'s LWS (scales plus the newest rows, applied at evaluation),
the folded LWS of cilkit 0.1, and cRT."""

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
def test_lws_fold_stage_changes_only_the_class_scaling(tmp_path, learner):
    lws = Trainer(
        cfg(f"learner.name={learner}", "learner.rebalance={method: lws_fold, epochs: 3}"),
        tmp_path / "lws",
        log=None,
    )
    lws.fit(stop_after_task=0)
    plain = Trainer(cfg(f"learner.name={learner}"), tmp_path / "plain", log=None)
    plain.fit(stop_after_task=0)
    a, b = _learner_state(tmp_path / "plain"), _learner_state(tmp_path / "lws")
    assert set(a) == set(b) - {"rebalancer.lws_scale"}
    scale = b["network.head.biases.0"] / a["network.head.biases.0"]
    assert not torch.allclose(scale, torch.ones(5))  # a scaling was learned ...
    w = "network.head.weights.0"
    assert torch.allclose(b[w], a[w] * scale[:, None])
    for key in a:  # ... and nothing else changed
        skip = (
            "_extra_state",
            "loss_fn",
            "network.head.weights",
            "network.head.biases",
            "rebalancer",
        )
        if key.startswith(skip):
            continue
        assert torch.equal(a[key], b[key]), key


def test_lws_fold_with_cosine_head_uses_class_scale(tmp_path):
    c = cfg("backbone.head=cosine", "learner.rebalance={method: lws_fold, epochs: 2}")
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


def _stage_snapshots(monkeypatch):
    """The learner's state before and after each stage the engine runs."""
    import cilkit.engine.trainer as trainer_mod

    snapshots = []
    original = trainer_mod.run_stage

    def run_stage(run, stage, *args, **kwargs):
        before = {k: v.detach().clone() for k, v in run.learner.state_dict().items() if "." in k}
        original(run, stage, *args, **kwargs)
        after = {k: v.detach().clone() for k, v in run.learner.state_dict().items() if "." in k}
        snapshots.append((before, after))

    monkeypatch.setattr(trainer_mod, "run_stage", run_stage)
    return snapshots


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_lws_trains_the_scales_and_the_newest_rows_only(tmp_path, monkeypatch, head):
    """Liu et al.'s stage 2: every scale (kept across tasks) and the newest classes' rows."""
    snapshots = _stage_snapshots(monkeypatch)
    c = cfg(f"backbone.head={head}", "learner.rebalance={method: lws, epochs: 3}")
    Trainer(c, tmp_path, log=None).fit()
    (_, after0), (before1, after1) = snapshots
    assert torch.equal(before1["rebalancer.lws_scale"][:5], after0["rebalancer.lws_scale"])
    changed = {k for k in before1 if not torch.equal(before1[k], after1[k])}
    expected = {"network.head.weights.1", "rebalancer.lws_scale"}  # the newest task's chunk
    expected |= {"network.head.biases.1"} if head == "linear" else {"network.head.sigma"}
    assert changed == expected  # no backbone weight, no BN statistic, no teacher
    assert torch.equal(before1["network.head.weights.0"], after1["network.head.weights.0"])
    scales = after1["rebalancer.lws_scale"]
    assert len(scales) == 10 and not torch.equal(scales[:5], before1["rebalancer.lws_scale"][:5])
    assert torch.equal(after1["network.head.class_scale"], torch.ones(10))  # nothing folded


def test_lws_scales_act_at_evaluation_only(tmp_path):
    c = cfg("learner.name=replay", "learner.rebalance={method: lws, epochs: 3}")
    t = Trainer(c, tmp_path, log=None)
    t.fit()
    learner = t.setup().learner
    learner.load_state_dict(_learner_state(tmp_path))
    learner.eval()
    x = torch.randn(6, 1, 8, 8)
    raw = learner.network(x)
    scale = learner.rebalancer.lws_scale
    assert not torch.allclose(scale, torch.ones(10))
    torch.testing.assert_close(learner.predict(x)["cnn"], raw * scale)
    learner.train()
    from cilkit.engine.data import Batch

    out = learner.training_step(Batch(x, torch.zeros(6, dtype=torch.long), torch.arange(6)))
    torch.testing.assert_close(out.logits, learner.network(x))  # training sees unscaled logits


def test_lws_scales_learn_at_lr_over_lr_factor(tmp_path, monkeypatch):
    import cilkit.engine.loop as loop_mod

    seen = []
    original = loop_mod.build_optimizer

    def build_optimizer(params, optim, task_id, *args):
        optimizer = original(params, optim, task_id, *args)
        seen.append(
            [(len(g["params"]), g["lr"], g["weight_decay"]) for g in optimizer.param_groups]
        )
        return optimizer

    monkeypatch.setattr(loop_mod, "build_optimizer", build_optimizer)
    c = cfg("learner.rebalance={method: lws, epochs: 1, lr: 0.2, lr_factor: 8}")
    Trainer(c, tmp_path, log=None).fit(stop_after_task=0)
    rows, scales = seen[-1]  # the stage's optimiser (after the task's own)
    assert rows == (2, 0.2, 5e-4) and scales == (1, 0.2 / 8, 5e-4)


def test_rebalance_sampler_is_a_typed_sampler_config():
    from cilkit.errors import ConfigError

    c = cfg("learner.rebalance={method: lws, sampler: {name: effective_number, beta: 0.99}}")
    assert c.learner.rebalance.sampler.beta == 0.99
    with pytest.raises(ConfigError, match="learner.rebalance.sampler.name: unknown sampler"):
        cfg("learner.rebalance={sampler: {name: effective}}")
    assert cfg("learner.rebalance={method: lws}").learner.rebalance.sampler is None


def test_rebalance_with_effective_number_sampler_runs(tmp_path):
    c = cfg("learner.rebalance={method: lws, epochs: 1, sampler: {name: effective_number}}")
    assert Trainer(c, tmp_path, log=None).fit()["num_tasks"] == 2
