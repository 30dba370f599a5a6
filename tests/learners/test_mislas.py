"""What makes MiSLAS that method: mixup in stage 1; stage 2 re-trains only the classifier (and
per-class logit scales) with label-aware smoothing while BatchNorm statistics shift."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_contract import _interrupt_in_epoch, results, tiny
from test_lucir_der_bic import _batch, _next_task

from cilkit.components.mixing import mixed_loss, mixup
from cilkit.config.schema import OptimConfig
from cilkit.data.samplers import ClassAwareSampler
from cilkit.engine.optim import build_optimizer
from cilkit.engine.trainer import RunInterrupted, Trainer
from cilkit.errors import ConfigError
from cilkit.losses import LOSSES, create_loss
from cilkit.losses.label_aware_smoothing import LabelAwareSmoothingConfig, label_aware_epsilons

# ---- mixup -----------------------------------------------------------------------------------


def test_mixup_pairs_each_sample_with_one_other_and_the_weights_sum_to_one():
    x = torch.eye(8)  # each row names its sample: a mixed row shows which two were mixed
    y = torch.arange(8) * 10
    mixed, y_a, y_b, lam = mixup(x, y, 1.0, torch.Generator().manual_seed(0))
    assert 0.0 < lam < 1.0
    perm = (mixed - lam * x).argmax(dim=1)  # the partner of each sample (itself if unpaired)
    assert sorted(perm.tolist()) == list(range(8))  # a permutation of the batch
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
    assert torch.equal(y_a, y) and torch.equal(y_b, y[perm])
    soft = lam * F.one_hot(y_a, 80).float() + (1 - lam) * F.one_hot(y_b, 80).float()
    assert torch.allclose(soft.sum(dim=1), torch.ones(8))


def test_mixup_draws_only_from_the_generator_it_is_handed():
    x, y = torch.randn(16, 3, 4, 4), torch.arange(16)
    a = mixup(x, y, 1.0, torch.Generator().manual_seed(5))
    b = mixup(x, y, 1.0, torch.Generator().manual_seed(5))
    c = mixup(x, y, 1.0, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and a[3] == b[3]
    assert a[3] != c[3]
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, y, 0.0, torch.Generator())


def test_mixed_loss_weights_the_two_targets_by_lam():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    a, b = torch.tensor([0]), torch.tensor([2])
    expected = 0.3 * F.cross_entropy(logits, a) + 0.7 * F.cross_entropy(logits, b)
    assert mixed_loss(F.cross_entropy, logits, a, b, 0.3).item() == pytest.approx(expected.item())


# ---- label-aware smoothing -------------------------------------------------------------------


def test_las_epsilon_runs_from_tail_to_head_with_the_shapes_ordered():
    counts = torch.tensor([50, 500, 5, 200, 120])  # not sorted: order by count, not position
    eps = {s: label_aware_epsilons(counts, 0.4, 0.1, s) for s in ("concave", "linear", "convex")}
    for e in eps.values():
        assert e[1].item() == pytest.approx(0.4)  # the most frequent class: smooth_head
        assert e[2].item() == pytest.approx(0.1)  # the rarest class: smooth_tail
    middle = [0, 3, 4]
    assert (eps["concave"][middle] > eps["linear"][middle]).all()
    assert (eps["linear"][middle] > eps["convex"][middle]).all()
    assert (eps["convex"][middle] > 0.1).all() and (eps["concave"][middle] < 0.4).all()
    r = (200 - 5) / (500 - 5)
    assert eps["linear"][3].item() == pytest.approx(0.1 + 0.3 * r)
    assert eps["concave"][3].item() == pytest.approx(0.1 + 0.3 * math.sin(math.pi * r / 2))
    assert eps["convex"][3].item() == pytest.approx(0.4 - 0.3 * math.cos(math.pi * r / 2))
    squared = label_aware_epsilons(counts, 0.4, 0.1, "exp", 2.0)
    assert squared[3].item() == pytest.approx(0.1 + 0.3 * r**2)
    assert torch.equal(
        label_aware_epsilons(torch.tensor([7, 7]), 0.4, 0.1, "concave"), torch.full((2,), 0.4)
    )


def test_las_loss_equals_the_hand_computation():
    loss = create_loss(LabelAwareSmoothingConfig(smooth_head=0.4, smooth_tail=0.1, shape="linear"))
    loss.set_class_counts(torch.tensor([10, 4, 1]))
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 1.5]])
    targets = torch.tensor([0, 1])
    expected = 0.0
    for z, y in zip(logits.tolist(), targets.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in z))
        log_p = [v - log_z for v in z]
        e = {0: 0.4, 1: 0.1 + 0.3 * 3 / 9}[y]
        expected += (1 - e) * -log_p[y] + e * -sum(log_p) / 3
    assert loss(logits, targets).item() == pytest.approx(expected / 2, rel=1e-6)
    plain = create_loss(LabelAwareSmoothingConfig(smooth_head=0.0, smooth_tail=0.0))
    plain.set_class_counts(torch.tensor([10, 4, 1]))
    assert plain(logits, targets).item() == pytest.approx(F.cross_entropy(logits, targets).item())
    assert LOSSES.get("las").obj is type(loss)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("learner.smooth_head=1.0", "smooth_head"),
        ("learner.smooth_tail=0.5", "smooth_head"),  # tail above head
        ("learner.shape=exp", "power"),
        ("learner.power=2.0", "power"),  # with the concave shape
        ("learner.mixup_alpha=-1", "mixup_alpha"),
        ("learner.lr_factor=0", "lr_factor"),
        ("learner.stage2_epochs=-1", "stage2_epochs"),
        ("learner.loss={name: las, shape: exp}", "power"),
    ],
)
def test_impossible_options_are_refused_in_one_line(override, field):
    with pytest.raises(ConfigError, match=field) as err:
        tiny("mislas", override)
    assert "\n" not in str(err.value)


# ---- the learner -----------------------------------------------------------------------------


def _fresh(tmp_path, *overrides: str):
    """A MiSLAS learner before its first task, on one task of all ten digits."""
    cfg = tiny("mislas", "scenario.initial_increment=10", "learner.stage2_epochs=2", *overrides)
    parts = Trainer(cfg, tmp_path, log=None).setup()
    return parts, _next_task(parts, 0)


def test_stage_one_trains_on_the_mixed_batch_with_both_targets(tmp_path):
    parts, ctx = _fresh(tmp_path)
    learner = parts.learner
    learner.eval()  # the same logits when recomputed below
    batch = _batch(parts, ctx, 32)
    original = batch.x.clone()
    batch = learner.transform_batch(batch, torch.Generator().manual_seed(0))
    y_b, lam = batch.extra["mixup"]
    assert not torch.equal(batch.x, original) and not torch.equal(y_b, batch.y)
    out = learner.training_step(batch)
    logits = learner.network(batch.x).float()
    expected = lam * F.cross_entropy(logits, batch.y) + (1 - lam) * F.cross_entropy(logits, y_b)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)

    parts, ctx = _fresh(tmp_path / "plain", "learner.mixup_alpha=0")
    batch = _batch(parts, ctx, 32)
    same = parts.learner.transform_batch(batch, torch.Generator().manual_seed(0))
    assert "mixup" not in same.extra and torch.equal(same.x, batch.x)


def _run_stage2(parts, ctx, steps: int = 6) -> dict:
    """Train MiSLAS's stage 2 for a few batches as the engine would (its parameters, sampler,
    optimiser and hooks); returns the network's state before it."""
    learner = parts.learner
    (stage,) = learner.stages(ctx, "after_training")
    before = {k: v.detach().clone() for k, v in learner.network.state_dict().items()}
    optimizer = build_optimizer(stage.parameters, stage.optim, 0)
    learner.train()
    stage.before_epoch(0)
    batches = parts.train.train_batches(
        ctx.indices, 64, torch.Generator().manual_seed(0), torch.Generator(), stage.sampler
    )
    for _, batch in zip(range(steps), batches, strict=False):
        out = stage.step(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    stage.finish()
    return before


def test_stage_two_retrains_the_classifier_and_shifts_batchnorm_statistics_only(tmp_path):
    parts, ctx = _fresh(tmp_path)
    learner = parts.learner
    (stage,) = learner.stages(ctx, "after_training")
    assert stage.when == "after_training" and stage.epochs == 2
    assert isinstance(stage.sampler, ClassAwareSampler) and stage.sampler.cfg.samples_per_class == 4
    head = {id(p) for p in learner.network.head.parameters()}
    groups = stage.parameters
    assert {id(p) for p in groups[0]["params"]} == head and groups[0]["lr_scale"] == 0.2
    assert groups[1]["params"] == [stage.state.scale]  # the logit scales, at the full rate
    assert stage.optim == OptimConfig(
        lr=0.1, momentum=0.9, weight_decay=2e-4, scheduler="cosine", milestones=()
    )

    before = _run_stage2(parts, ctx)
    after = learner.network.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    head_keys = {f"head.{n}" for n, _ in learner.network.head.named_parameters()}
    assert head_keys and head_keys <= changed  # the classifier is re-trained
    backbone = {k for k in before if k.startswith("backbone.")}
    stats = {k for k in backbone if "running_" in k or "num_batches_tracked" in k}
    assert stats and stats <= changed  # shift learning: BatchNorm statistics re-estimated
    assert not (backbone - stats) & changed  # convolutions and BatchNorm affine weights fixed
    assert len(learner.class_scale) == 10 and not torch.equal(learner.class_scale, torch.ones(10))
    learner.eval()
    x = _batch(parts, ctx, 8).x
    assert torch.allclose(learner.predict(x)["cnn"], learner.network(x) * learner.class_scale)


def test_stage_two_without_shift_leaves_the_whole_backbone_unchanged(tmp_path):
    parts, ctx = _fresh(tmp_path, "learner.shift_bn=false", "learner.learn_scales=false")
    learner = parts.learner
    (stage,) = learner.stages(ctx, "after_training")
    assert len(stage.parameters) == 1  # the classifier alone
    before = _run_stage2(parts, ctx)
    after = learner.network.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed)
    assert len(learner.class_scale) == 0


def test_stage_two_smooths_by_the_counts_of_the_data_the_task_trains_on(tmp_path):
    parts, ctx = _fresh(tmp_path, "scenario.long_tail={kind: exp, imb_factor: 10}")
    learner = parts.learner
    counts = torch.bincount(parts.train.targets_cpu[ctx.indices], minlength=10)
    assert counts.max() >= 5 * counts.min()
    (stage,) = learner.stages(ctx, "after_training")
    batch = _batch(parts, ctx, 64)
    learner.eval()
    logits = learner.network(batch.x).float()
    eps = label_aware_epsilons(counts, 0.4, 0.1, "concave")[batch.y]
    log_p = F.log_softmax(logits, dim=1)
    nll = -log_p.gather(1, batch.y[:, None]).squeeze(1)
    expected = ((1 - eps) * nll - eps * log_p.mean(dim=1)).mean()
    assert stage.step(batch).loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ctrl_c_inside_stage_two_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    cfg = tiny(
        "mislas", "scenario.initial_increment=10", "train.epochs=1", "learner.stage2_epochs=2"
    )
    expected = results(Trainer(cfg, tmp_path / "full", log=None).fit())
    _interrupt_in_epoch(monkeypatch, epoch=2, batch=1)  # stage 2's first epoch
    with pytest.raises(RunInterrupted):
        Trainer(cfg, tmp_path / "cut", log=None).fit()
    monkeypatch.undo()
    assert "task-000-after_" in (tmp_path / "cut" / "checkpoints" / "LATEST").read_text()
    assert results(Trainer(cfg, tmp_path / "cut", log=None).fit(resume=True)) == expected


def test_shipped_configs_carry_the_authors_cifar100_lt_schedules():
    from pathlib import Path

    from cilkit.config import load_config

    lt = Path(__file__).resolve().parents[2] / "configs" / "lt"
    for imb, (head, tail, factor) in {
        100: (0.4, 0.1, 0.2),
        50: (0.3, 0.0, 0.1),
        10: (0.2, 0.0, 0.1),
    }.items():
        cfg = load_config(lt / f"cifar100_lt{imb}_mislas.yaml")
        assert cfg.scenario.initial_increment == 100 and cfg.scenario.long_tail.imb_factor == imb
        c = cfg.learner
        assert (c.smooth_head, c.smooth_tail, c.lr_factor) == (head, tail, factor)
        assert c.mixup_alpha == 1.0 and c.stage2_epochs == 10 and c.stage2_lr == 0.1
        assert cfg.train.epochs == 200 and cfg.train.batch_size == 128
        assert cfg.optim.lr == 0.1 and cfg.optim.weight_decay == 2e-4
        assert cfg.optim.milestones == (160, 180) and cfg.optim.warmup_epochs == 5
