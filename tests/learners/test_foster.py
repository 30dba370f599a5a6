"""What makes FOSTER that method: boosting with a second extractor, compression back to one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_contract import tiny
from test_lucir_der_bic import _after_task, _batch, _next_task

from cilkit.backbones import Frozen
from cilkit.config import build_config
from cilkit.engine.trainer import Trainer
from cilkit.errors import ConfigError
from cilkit.learners.foster import balanced_kd
from cilkit.losses import kd_loss


def test_balanced_kd_reweights_the_teacher_per_class():
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    assert balanced_kd(student, teacher, torch.ones(4), 2.0).item() == pytest.approx(
        kd_loss(student, teacher, 2.0).item(), rel=1e-6
    )
    # a class weighted 0 drops out of the target distribution
    w = torch.tensor([1.0, 1.0, 0.0, 1.0])
    soft = F.softmax(teacher / 2, dim=1) * w
    soft = soft / soft.sum(1, keepdim=True)
    expected = -(soft * F.log_softmax(student / 2, dim=1)).sum(1).mean()
    assert balanced_kd(student, teacher, w, 2.0).item() == pytest.approx(expected.item())


def test_foster_boosts_with_a_frozen_old_extractor_and_balanced_logits(tmp_path):
    parts = _after_task("foster", tmp_path)
    learner = parts.learner
    ctx = _next_task(parts, 1)
    net = learner.network
    assert len(net.branches) == 2 and isinstance(net.branches[0], Frozen)
    learner.before_training(ctx, ctx.indices)
    counts = torch.bincount(parts.train.targets_cpu[ctx.indices], minlength=7).float()
    w = learner.boost_weights
    assert w.shape == (7,) and w.sum().item() == pytest.approx(7.0)
    assert w[:4].min() > w[4:].max()  # old classes (few exemplars) weigh more
    assert counts[:4].max() < counts[4:].min()
    learner.train()
    batch = _batch(parts, ctx)
    out = learner.training_step(batch)
    assert set(out.terms) == {"ce", "fe", "kd"} and learner.fe_head.num_classes == 7
    expected_ce = F.cross_entropy(out.logits.detach() / w, batch.y)
    assert out.terms["ce"].item() == pytest.approx(expected_ce.item(), rel=1e-5)
    out.loss.backward()
    assert all(p.grad is None for p in net.branches[0].parameters())
    assert all(p.grad is not None for p in learner.fe_head.parameters())


def test_foster_compresses_into_one_extractor_started_from_the_old_one(tmp_path):
    parts = _after_task("foster", tmp_path)
    learner = parts.learner
    ctx = _next_task(parts, 1)
    learner.before_training(ctx, ctx.indices)
    (stage,) = learner.stages(ctx, "after_training")
    student = stage.state
    old = learner.old_network.module
    for key, value in old.backbone.state_dict().items():
        assert torch.equal(student.backbone.state_dict()[key], value), key
    assert torch.equal(student.head.weight[:4], old.head.weight)
    assert student.head.num_classes == 7 and len(student.branches) == 1
    assert {id(p) for p in stage.parameters} == {id(p) for p in student.parameters()}
    teacher = learner.network
    stage.before_epoch(0)
    assert not teacher.training and student.training
    out = stage.step(_batch(parts, ctx))
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    stage.finish()
    assert learner.network is student


def test_foster_ends_every_task_with_one_extractor(tmp_path):
    cfg = tiny("foster")
    summary = Trainer(cfg, tmp_path, log=None).fit()
    assert len(summary["accuracy_matrix"]) == 3
    from cilkit.engine.checkpoint import load_checkpoint

    for task in (1, 2):  # the end-of-task checkpoints hold one extractor
        state = load_checkpoint(tmp_path / "checkpoints" / f"task-{task:03d}.json")["learner"]
        assert any(k.startswith("network.branches.0.") for k in state)
        assert not any(k.startswith("network.branches.1.") for k in state), task
    fresh = Trainer(cfg, tmp_path / "other", log=None).setup().learner
    fresh.load_state_dict(state)
    assert len(fresh.network.branches) == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learner.beta1=1.0", "must be in [0, 1)"),
        ("learner.beta2=-0.1", "must be in [0, 1)"),
        ("learner.compression_epochs=0", "must be >= 1"),
        ("learner.compression_lr=0", "must be > 0"),
    ],
)
def test_impossible_options_are_refused_in_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        build_config({"learner": {"name": "foster"}}, [override])
    assert str(err.value) == f"command line: {override}: {message}"
