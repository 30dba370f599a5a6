"""What makes the prototype LT-CIL method that method: nearest-prototype NCM loss on squared
distances, a per-class bias layer trained task by task, sample mix, pull and push."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from test_contract import tiny

from cilkit.components.calibration import ClassBias
from cilkit.config.schema import FieldError, LossConfig, RebalanceConfig
from cilkit.contract import Batch
from cilkit.engine.trainer import Trainer
from cilkit.errors import ConfigError
from cilkit.learners.proto_ltcil import ProtoLTCIL, ProtoLTCILConfig
from cilkit.losses.prototype import pull_loss, push_loss

# ---- the terms on hand-made prototypes --------------------------------------------------------


def test_pull_is_zero_when_prototypes_have_not_moved():
    stored = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    assert pull_loss(stored.clone(), stored).item() == 0.0
    moved = stored + torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert pull_loss(moved, stored).item() == pytest.approx(25.0 / 2)


def test_push_grows_as_a_new_prototype_approaches_an_old_one_and_stays_bounded():
    old = torch.tensor([[0.0, 0.0]])
    values = [push_loss(torch.tensor([[x, 0.0]]), old, 2.0).item() for x in (8, 4, 2, 1, 0)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert values[2] == pytest.approx(1 / math.sqrt(1 + 4 / 2))  # d^2 = 4, T = 2
    assert values[-1] == pytest.approx(1.0)  # bounded where the seed's rsqrt(d^2/T) is not
    two_old = torch.tensor([[0.0, 0.0], [4.0, 0.0]])  # summed over old, mean over new
    new = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = (2 / math.sqrt(3) + 1 + 1 / math.sqrt(9)) / 2
    assert push_loss(new, two_old, 2.0).item() == pytest.approx(expected)


def test_bias_layer_with_alpha_one_beta_zero_is_the_identity_then_per_class():
    bias = ClassBias()
    bias.add_task(2)
    bias.add_task(3)
    d = torch.rand(4, 5) * 10
    assert torch.equal(bias(d), d)
    with torch.no_grad():
        bias.alphas[0].copy_(torch.tensor([2.0, 3.0]))
        bias.betas[1].copy_(torch.tensor([1.0, -1.0, 0.5]))
    expected = d * torch.tensor([2.0, 3.0, 1, 1, 1]) + torch.tensor([0, 0, 1.0, -1.0, 0.5])
    assert torch.allclose(bias(d), expected)
    bias(d, train_last=True).sum().backward()  # only the last task's pair trains
    assert bias.alphas[0].grad is None and bias.betas[0].grad is None
    assert torch.allclose(bias.alphas[1].grad, d[:, 2:].sum(0))
    fresh = ClassBias()
    fresh.load_state_dict(bias.state_dict())
    assert [len(a) for a in fresh.alphas] == [2, 3] and torch.equal(fresh(d), bias(d))


def test_impossible_options_are_one_line_errors():
    for kwargs, field in [
        ({"loss": LossConfig(name="bsce")}, "loss"),
        ({"rebalance": RebalanceConfig()}, "rebalance"),
        ({"mix_lambda": 1.0}, "mix_lambda"),
        ({"push_weight": -1.0}, "push_weight"),
        ({"bias_epochs": -1}, "bias_epochs"),
        ({"temperature": 0.0}, "temperature"),
    ]:
        with pytest.raises(FieldError, match=field) as err:
            ProtoLTCILConfig(**kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="mix_lambda"):
        tiny("proto_ltcil", "learner.mix_lambda=1.5")


# ---- the learner on hand-made features ---------------------------------------------------------


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return Trainer(tiny("proto_ltcil"), tmp_path_factory.mktemp("proto"), log=None).setup()


def _hand_made(learner: ProtoLTCIL, **cfg) -> ProtoLTCIL:
    """Two old classes with prototypes (0,0) and (4,0), two new classes; features = inputs."""
    learner.cfg = dataclasses.replace(learner.cfg, **cfg)
    learner.network.forward_features = lambda x: x
    learner.num_old_classes, learner.num_seen_classes = 2, 4
    learner.bias = ClassBias()
    learner.bias.add_task(2)
    learner.bias.add_task(2)
    learner.class_means = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    learner.has_prototype = torch.tensor([True, True, False, False])
    return learner


def test_ncm_loss_uses_stored_old_and_batch_new_prototypes_then_pull_and_push(parts):
    learner = _hand_made(parts.learner, mix=False, pull_weight=0.5, push_weight=0.25)
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [3.0, 0.0]])
    y = torch.tensor([0, 2, 2])  # class 3 is absent from the batch
    out = learner.training_step(Batch(x, y, torch.arange(3)))
    prototypes = torch.tensor([[0.0, 0.0], [4.0, 0.0], [2.0, 0.0]])  # class 2: the batch mean
    d = ((x[:, None] - prototypes[None]) ** 2).sum(-1)
    assert out.terms["ncm"].item() == pytest.approx(F.cross_entropy(-d, y).item(), rel=1e-6)
    assert torch.isinf(out.logits[:, 3]).all() and torch.allclose(out.logits[:, :3], -d)
    assert out.terms["pull"].item() == pytest.approx(1.0)  # class 0: batch mean (0,1) vs (0,0)
    assert out.terms["push"].item() == pytest.approx(2 / math.sqrt(3))  # (2,0) vs (0,0), (4,0)
    # the seed's schedule in task 1: pull weight times T = 2, push weight over 2
    expected = out.terms["ncm"] + 0.5 * 2 * 1.0 + 0.25 / 2 * 2 / math.sqrt(3)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    learner.cfg = dataclasses.replace(learner.cfg, task_scaling=False)
    unscaled = learner.training_step(Batch(x, y, torch.arange(3))).loss
    assert unscaled.item() == pytest.approx((out.terms["ncm"] + 0.5 + 0.5 / math.sqrt(3)).item())


def test_predict_reports_the_bias_corrected_and_the_raw_nearest_prototype(parts):
    learner = _hand_made(parts.learner)
    with torch.no_grad():
        learner.bias.alphas[0].copy_(torch.tensor([2.0, 1.0]))
        learner.bias.betas[0].copy_(torch.tensor([0.0, -10.0]))
    learner.has_prototype = torch.tensor([True, True, True, False])
    learner.class_means[2] = torch.tensor([0.0, 3.0])
    out = learner.predict(torch.tensor([[1.0, 0.0]]))
    assert list(out) == ["cnn", "nme"]
    assert out["nme"][0, :3].tolist() == [-1.0, -9.0, -10.0] and out["nme"][0, 3] == -math.inf
    assert out["cnn"][0, :3].tolist() == [-2.0, 1.0, -10.0]  # the bias layer flips the winner
    assert out["nme"].argmax().item() == 0 and out["cnn"].argmax().item() == 1


def test_sample_mix_pairs_new_images_with_exemplars_labelled_with_both_classes(parts):
    learner = parts.learner
    learner.cfg = dataclasses.replace(learner.cfg, mix=True, mix_lambda=0.3)
    learner.num_old_classes, learner.num_seen_classes = 4, 7
    train = parts.train
    learner.memory.per_class = {c: train.indices_of([c])[:5] for c in range(4)}
    learner._split = train
    idx = torch.cat([train.indices_of([1])[:3], train.indices_of([5, 6])[:6]])
    batch = next(train.train_batches(idx, len(idx), torch.Generator().manual_seed(1)))
    x_mix, y_new, y_old = learner.transform_batch(batch, torch.Generator().manual_seed(0)).extra[
        "mix"
    ]
    new = batch.y >= 4
    assert torch.equal(y_new, batch.y[new]) and len(y_old) == int(new.sum()) == 6
    assert (y_old < 4).all() and (y_new >= 4).all()
    g = torch.Generator().manual_seed(0)  # the same draws from the engine's generator
    stored = learner.memory.indices()
    partner = train.augmented(stored[torch.randint(len(stored), (6,), generator=g)], g)
    assert torch.equal(partner.y, y_old)
    assert torch.allclose(x_mix, 0.3 * batch.x[new] + 0.7 * partner.x)
    learner.cfg = dataclasses.replace(learner.cfg, mix=False)
    fresh = next(train.train_batches(idx, len(idx), torch.Generator().manual_seed(1)))
    assert "mix" not in learner.transform_batch(fresh, torch.Generator()).extra


def test_sample_mix_trains_on_a_batch_with_a_single_new_image(tmp_path):
    """The mixed images share the batch's forward pass: one new image in a batch (common on a
    process of a torchrun job) must not reach BatchNorm alone, which refuses a batch of one."""
    parts = Trainer(tiny("proto_ltcil"), tmp_path, log=None).setup()  # a real network
    learner = parts.learner
    learner.cfg = dataclasses.replace(learner.cfg, mix=True)
    learner.num_old_classes, learner.num_seen_classes = 4, 7
    train = parts.train
    learner.memory.per_class = {c: train.indices_of([c])[:5] for c in range(4)}
    learner._split = train
    learner.bias = ClassBias()
    learner.bias.add_task(4)
    learner.bias.add_task(3)
    learner.class_means = torch.randn(7, learner.network.feature_dim)
    learner.has_prototype = torch.ones(7, dtype=torch.bool)
    idx = torch.cat([train.indices_of([1, 2])[:7], train.indices_of([5])[:1]])
    batch = next(train.train_batches(idx, len(idx), torch.Generator().manual_seed(1)))
    batch = learner.transform_batch(batch, torch.Generator().manual_seed(0))
    assert len(batch.extra["mix"][0]) == 1
    learner.train()
    out = learner.training_step(batch)
    assert torch.isfinite(out.loss) and "mix" in out.terms


def test_the_bias_stage_trains_the_last_pair_and_the_first_task_only_if_asked(parts):
    learner = parts.learner
    learner.bias = ClassBias()
    learner.bias.add_task(4)
    learner.num_old_classes, learner.num_seen_classes = 0, 4
    learner.bias_indices = torch.arange(8)
    for first, expected in ((True, 1), (False, 0)):
        learner.cfg = dataclasses.replace(learner.cfg, bias_first_task=first, bias_epochs=2)
        assert len(learner.stages(None, "after_task")) == expected
    learner.bias.add_task(3)
    learner.num_old_classes, learner.num_seen_classes = 4, 7
    (stage,) = learner.stages(None, "after_task")
    assert stage.parameters == [learner.bias.alphas[1], learner.bias.betas[1]]
    assert stage.epochs == 2 and stage.optim.name == "adam" and stage.optim.lr == 1e-4
    assert torch.equal(stage.indices, torch.arange(8))
    assert learner.stages(None, "after_training") == []
    learner.cfg = dataclasses.replace(learner.cfg, bias_epochs=0)
    assert learner.stages(None, "after_task") == []


# ---- a real run: prototypes, balanced bias set, what the bias stage trains ----------------------


def test_prototypes_bias_set_and_the_bias_stage_training_only_the_current_pair(
    tmp_path, monkeypatch
):
    snapshots = []
    original = ProtoLTCIL.after_task

    def after_task(self, ctx):
        original(self, ctx)
        snapshots.append(
            {
                "learner": self,
                "ctx": ctx,
                "alphas": [a.detach().clone() for a in self.bias.alphas],
                "backbone": {k: v.clone() for k, v in self.network.backbone.state_dict().items()},
            }
        )

    monkeypatch.setattr(ProtoLTCIL, "after_task", after_task)
    cfg = tiny("proto_ltcil", "train.epochs=1", "learner.bias_first_task=true")
    Trainer(cfg, tmp_path, log=None).fit(stop_after_task=1)
    first, second = snapshots
    learner, ctx = second["learner"], second["ctx"]
    # task 0's stage trained its pair; task 1's stage left it as it was and trained its own
    assert not torch.equal(second["alphas"][0], torch.ones(4))
    assert torch.equal(learner.bias.alphas[0].detach(), second["alphas"][0])
    assert torch.equal(second["alphas"][1], torch.ones(3))
    assert not torch.equal(learner.bias.alphas[1].detach(), torch.ones(3))
    for k, v in learner.network.backbone.state_dict().items():  # the extractor is frozen
        assert torch.equal(v, second["backbone"][k]), k
    # prototypes: un-normalised means of the exemplars' features (eval mode, no flip)
    idx = learner.memory.indices()
    feats = learner.features_fn(ctx)(idx)
    labels = ctx.train.targets_cpu[idx]
    for c in range(7):
        assert torch.allclose(learner.class_means[c], feats[labels == c].mean(0), atol=1e-5)
    assert learner.has_prototype.all() and first["learner"] is learner
    # the bias set is balanced: old classes' exemplars, new classes subsampled to the quota
    bias_labels = ctx.train.targets_cpu[learner.bias_indices.cpu()]
    counts = torch.bincount(bias_labels, minlength=7).tolist()
    assert counts == [len(learner.memory.per_class[c]) for c in range(7)]
    for c in range(4):
        kept = learner.bias_indices.cpu()[bias_labels == c]
        assert torch.equal(kept, learner.memory.per_class[c])


def test_masked_pull_and_push_equal_the_selected_rows_reference():
    """The fixed-shape (sync-free) terms give the numbers of selecting the rows first."""
    g = torch.Generator().manual_seed(3)
    means, stored = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    new = torch.randn(4, 3, generator=g)
    present = torch.tensor([True, False, True, True, False])
    new_present = torch.tensor([False, True, True, False])
    ref_pull = (means[present] - stored[present]).pow(2).sum(1).mean()
    assert pull_loss(means, stored, present).item() == pytest.approx(ref_pull.item(), rel=1e-6)
    d = ((new[new_present][:, None] - stored[present][None]) ** 2).sum(-1)
    ref_push = torch.rsqrt(1 + d / 2.0).sum(1).mean()
    push = push_loss(new, stored, 2.0, new_present, present)
    assert push.item() == pytest.approx(ref_push.item(), rel=1e-6)
    none = torch.zeros(5, dtype=torch.bool)  # nothing selected: zero, not NaN
    assert pull_loss(means, stored, none).item() == 0.0
    assert push_loss(new, stored, 2.0, new_present, none).item() == 0.0
    assert push_loss(new, stored, 2.0, torch.zeros(4, dtype=torch.bool), present).item() == 0.0


def test_training_step_without_old_prototypes_in_the_batch(parts):
    """Old classes absent from the batch: pull is zero; push counts only present new classes."""
    learner = _hand_made(parts.learner, mix=False, task_scaling=False)
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([2, 2, 3])
    out = learner.training_step(Batch(x, y, torch.arange(3)))
    assert out.terms["pull"].item() == 0.0
    old = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    new = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    ref = torch.rsqrt(1 + ((new[:, None] - old[None]) ** 2).sum(-1) / 2.0).sum(1).mean()
    assert out.terms["push"].item() == pytest.approx(ref.item(), rel=1e-6)
