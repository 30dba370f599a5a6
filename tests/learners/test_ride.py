"""What makes RIDE that method: experts on one shared trunk, LDAM per expert plus a diversity
term, and a router that lets a sample consult fewer experts, counted in the record."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_contract import tiny
from test_lucir_der_bic import _batch, _next_task

from cilkit.backbones import create_backbone
from cilkit.backbones.experts import ExpertNet
from cilkit.config import build_config
from cilkit.config.schema import BackboneConfig
from cilkit.engine.trainer import Trainer
from cilkit.errors import ConfigError
from cilkit.losses import diversity_kl


def _resnet32_experts(num_experts: int, reduce: bool) -> ExpertNet:
    cfg = BackboneConfig(name="resnet32")
    return ExpertNet(
        create_backbone(cfg, 3), lambda: create_backbone(cfg, 3), num_experts, 1, reduce, 30.0
    )


def _ready(tmp_path, *overrides: str):
    """A RIDE learner before its first task's training, with a context and a batch."""
    parts = Trainer(tiny("ride", *overrides), tmp_path, log=None).setup()
    ctx = _next_task(parts, 0)
    parts.learner.before_training(ctx, ctx.indices)
    return parts, ctx, _batch(parts, ctx)


@pytest.mark.parametrize(("reduce", "widths"), [(True, [24, 48]), (False, [32, 64])])
@pytest.mark.parametrize("num_experts", [3, 4])
def test_resnet32_experts_have_the_authors_widths(num_experts, reduce, widths):
    net = _resnet32_experts(num_experts, reduce)
    assert net.num_experts == num_experts and len(net.heads) == num_experts
    for expert in net.experts:
        assert [stage[-1].conv2.out_channels for stage in expert.stages] == widths
    assert net.expert_dim == widths[-1] and net.feature_dim == num_experts * widths[-1]
    assert len(net.trunk.stages) == 1  # stem + layer1 shared, layer2 and layer3 per expert
    net.expand(5)
    x = torch.randn(2, 3, 32, 32)
    features, logits = net.forward_experts(x)
    assert logits.shape == (num_experts, 2, 5) and logits.abs().max() <= 30.0 + 1e-4
    assert torch.allclose(net(x), logits.mean(0), atol=1e-5)


def test_experts_share_one_trunk_and_own_their_later_stages():
    net = _resnet32_experts(3, True)
    ids = [{id(p) for p in e.parameters()} for e in net.experts]
    assert not ids[0] & ids[1] and not ids[1] & ids[2]  # no expert shares a weight
    w = [e.stages[0][0].conv1.weight for e in net.experts]
    assert not torch.equal(w[0], w[1])  # initialised independently (else they stay equal)
    net.expand(4)
    _, logits = net.forward_experts(torch.randn(2, 3, 32, 32))
    logits[0].sum().backward()  # expert 0 alone
    assert all(p.grad is not None for p in net.trunk.parameters())
    assert all(p.grad is not None for p in net.experts[0].parameters())
    assert all(p.grad is None or not p.grad.any() for p in net.experts[1].parameters())


def test_diversity_is_zero_for_identical_experts_and_positive_otherwise():
    z = torch.randn(4, 6)
    same = torch.stack([z, z, z])
    assert all(diversity_kl(e, same.mean(0), 1.0).abs() < 1e-6 for e in same)
    other = torch.stack([z, z + torch.randn(4, 6), z])
    mean = other.mean(0)
    p, q = F.softmax(mean / 2, 1), F.softmax(other[1] / 2, 1)
    hand = 4.0 * (p * (p.log() - q.log())).sum(1).mean()  # T^2 KL(mean || expert), T = 2
    assert diversity_kl(other[1], mean, 2.0) == pytest.approx(hand.item(), rel=1e-5)
    assert all(diversity_kl(e, mean, 1.0) > 0 for e in other)


def test_the_loss_is_ldam_per_expert_plus_the_weighted_diversity(tmp_path):
    parts, ctx, batch = _ready(tmp_path)
    learner = parts.learner
    out = learner.training_step(batch)
    _, logits = learner.network.forward_experts(batch.x)
    counts = torch.bincount(ctx.train.targets_cpu[ctx.indices], minlength=4).float()
    m = counts.pow(-0.25) * (0.5 / counts.pow(-0.25).max())  # Cao et al.'s margins
    ldam = sum(F.cross_entropy(z - 30.0 * m * F.one_hot(batch.y, 4), batch.y) for z in logits)
    assert out.terms["ldam"].item() == pytest.approx(ldam.item(), rel=1e-4)
    mean = logits.mean(0)
    diversity = sum(diversity_kl(z, mean, 1.0) for z in logits)
    assert out.terms["diversity"].item() == pytest.approx(diversity.item(), rel=1e-4)
    assert out.loss.item() == pytest.approx(ldam.item() - 0.45 * diversity.item(), rel=1e-4)


def test_drw_makes_the_diversity_temperature_follow_the_class_prior(tmp_path):
    parts, _, _ = _ready(tmp_path, "learner.drw_start_epoch=1")
    learner = parts.learner
    learner.loss_fn.set_class_counts(torch.tensor([30.0, 10.0, 0.0, 60.0]))
    assert learner.diversity_temperature() == 1.0  # before re-weighting
    learner.before_epoch(1, 3)
    w = 4 * torch.tensor([0.3, 0.1, 0.0, 0.6]) * 0.05 + 0.95  # C pi f + 1 - f
    assert torch.allclose(learner.diversity_temperature(), w / w.max())


def test_the_router_stage_trains_only_the_router(tmp_path):
    parts, ctx, batch = _ready(tmp_path, "learner.router=true")
    learner = parts.learner
    (stage,) = learner.stages(ctx, "after_training")
    assert learner.stages(ctx, "after_task") == []
    assert {id(p) for p in stage.parameters} == {id(p) for p in learner.router.parameters()}
    learner.train()
    stage.before_epoch(0)
    assert not any(m.training for m in learner.network.modules())
    stage.step(batch).loss.backward()
    assert all(p.grad is not None for p in learner.router.parameters())
    assert all(p.grad is None for p in learner.network.parameters())
    main = {id(p) for p in learner.configure_training(ctx)}
    assert not main & {id(p) for p in learner.router.parameters()}


def test_the_router_decides_how_many_experts_a_sample_consults(tmp_path):
    parts, _, batch = _ready(tmp_path, "learner.router=true")
    learner = parts.learner.eval()
    _, logits = learner.network.forward_experts(batch.x)
    for bias, used, expected in [(-1e4, 1.0, logits[0]), (1e4, 3.0, logits.mean(0))]:
        learner.router.score.bias.data.fill_(bias)
        learner.reset_evaluation_stats()
        out = learner.predict(batch.x)
        assert torch.allclose(out["cnn"], expected, atol=1e-4)
        assert torch.allclose(out["all_experts"], logits.mean(0), atol=1e-4)  # no routing
        assert learner.evaluation_stats() == {"experts_per_sample": pytest.approx(used)}


def test_experts_per_sample_reaches_the_record_table_and_summary(tmp_path):
    import io

    log = io.StringIO()
    summary = Trainer(tiny("ride", "learner.router=true"), tmp_path, log=log).fit()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    used = [r["evaluation_stats"]["experts_per_sample"] for r in records]
    assert all(1.0 <= u <= 3.0 for u in used)
    assert summary["evaluation_stats"] == {"experts_per_sample": used[-1]}
    assert summary["evaluation_stats_per_task"] == {"experts_per_sample": used}
    assert summary["classifiers"][:2] == ["cnn", "all_experts"]
    assert summary["all_experts_avg_incremental_accuracy"] is not None
    assert json.loads((tmp_path / "summary.json").read_text())["evaluation_stats"]
    text = log.getvalue()
    header = next(line for line in text.splitlines() if line.startswith("task classes"))
    assert "experts_per_sample" in header and f"experts_per_sample {used[-1]:.2f}" in text


def test_without_router_every_sample_consults_every_expert(tmp_path):
    parts, _, batch = _ready(tmp_path, "learner.num_experts=2")
    learner = parts.learner.eval()
    learner.reset_evaluation_stats()
    assert "all_experts" not in learner.predict(batch.x)  # the mean of all is already cnn
    assert learner.evaluation_stats() == {"experts_per_sample": 2.0}
    learner.reset_evaluation_stats()
    assert learner.evaluation_stats() == {}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learner.num_experts=0"], "num_experts.*must be >= 1"),
        (["learner.router=true", "learner.num_experts=1"], "needs num_experts >= 2"),
        (["learner.shared_stages=3"], "shared_stages: the backbone has 3 stages"),
        (["learner.reduce_dimension=true", "backbone.name=convnet4"], "need a ResNet"),
        (["learner.loss.name=ldam"], "ride's loss is LDAM per expert"),
        (["learner.reweight_factor=1"], "reweight_factor.*must be in"),
    ],
)
def test_impossible_options_are_one_line_errors(overrides, message, tmp_path):
    data = {"data": {"name": "digits"}, "backbone": {"name": "resnet32"}}
    with pytest.raises(ConfigError, match=message) as err:
        cfg = build_config({**data, "learner": {"name": "ride"}}, overrides)
        Trainer(cfg, tmp_path, log=None).setup()
    assert "\n" not in str(err.value)


def test_ctrl_c_inside_the_router_stage_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    from test_contract import _interrupt_in_epoch, results

    from cilkit.engine.trainer import RunInterrupted

    cfg = tiny("ride", "learner.router=true")
    expected = results(Trainer(cfg, tmp_path / "full", log=None).fit())
    _interrupt_in_epoch(monkeypatch, epoch=9, batch=1)  # task 1: epochs 6-8, router 9-10
    with pytest.raises(RunInterrupted):
        Trainer(cfg, tmp_path / "cut", log=None).fit()
    monkeypatch.undo()
    latest = (tmp_path / "cut" / "checkpoints" / "LATEST").read_text()
    assert "task-001-after_training" in latest
    assert results(Trainer(cfg, tmp_path / "cut", log=None).fit(resume=True)) == expected
