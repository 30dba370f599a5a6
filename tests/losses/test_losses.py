"""Classification losses: generic contract over every registered loss, then each loss against a
direct formula on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cilkit.config.loader import build_config
from cilkit.errors import ConfigError
from cilkit.losses import LOSSES, ClassificationLoss, LossConfig, create_loss
from cilkit.losses.base import effective_number_weights
from cilkit.losses.long_tail import (
    ClassBalancedLossConfig,
    FeatureBalancedLoss,
    FeatureBalancedLossConfig,
    FocalLossConfig,
    GMLLossConfig,
    LADELossConfig,
    LDAMLossConfig,
    LogitAdjustedLossConfig,
)

# Class 1 has no training sample, class 2 a single one.
COUNTS = torch.tensor([50.0, 0.0, 1.0, 7.0])


def make_loss(name: str, **options) -> ClassificationLoss:
    cls = LOSSES.get(name).config_cls or LossConfig
    loss = create_loss(cls(name=name, **options))
    loss.set_class_counts(COUNTS)
    loss.set_epoch(5, 10)
    return loss


def batch(seed: int = 0, n: int = 12, dim: int = 16):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, len(COUNTS), generator=gen) * 2
    targets = torch.tensor([0, 2, 3, 0, 3, 0, 2, 0, 3, 0, 0, 3])[:n]
    features = torch.randn(n, dim, generator=gen).abs() + 0.1
    return logits, targets, features


def call(loss: ClassificationLoss, logits, targets, features):
    return loss(logits, targets, features if loss.needs_features else None)


def log_prior(counts: torch.Tensor) -> torch.Tensor:
    n = counts.clamp_min(1.0)
    return (n / n.sum()).log()


# ---------------------------------------------------------------------------------------------
# Generic contract
# ---------------------------------------------------------------------------------------------


def test_all_long_tail_losses_registered():
    expected = {"ce", "focal", "cb", "ldam", "bsce", "la", "lade", "gml", "feabal"}
    assert expected <= set(LOSSES.names())
    for entry in LOSSES.entries():
        assert entry.description, entry.name


@pytest.mark.parametrize("name", LOSSES.names())
def test_finite_scalar_and_gradient(name):
    loss = make_loss(name)
    logits, targets, features = batch()
    logits.requires_grad_(True)
    value = call(loss, logits, targets, features)
    assert value.ndim == 0 and value.dtype == torch.float32
    assert torch.isfinite(value)
    value.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES.names())
def test_zero_count_class_and_single_sample(name):
    # The single-sample class (2) is the only sample of the batch; class 1 has count 0.
    loss = make_loss(name)
    logits = torch.randn(1, len(COUNTS), requires_grad=True)
    value = call(loss, logits, torch.tensor([2]), torch.rand(1, 8) + 0.1)
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", LOSSES.names())
def test_bf16_logits(name):
    loss = make_loss(name)
    logits, targets, features = batch()
    ref = call(loss, logits, targets, features)
    low = logits.bfloat16().requires_grad_(True)
    value = call(loss, low, targets, features.bfloat16())
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert value.item() == pytest.approx(ref.item(), rel=0.05, abs=0.05)
    value.backward()
    assert torch.isfinite(low.grad.float()).all()


@pytest.mark.parametrize("name", LOSSES.names())
def test_with_drw_weights(name):
    loss = make_loss(name, drw_start_epoch=0)
    logits, targets, features = batch()
    assert torch.isfinite(call(loss, logits, targets, features))


@pytest.mark.parametrize("name", LOSSES.names())
def test_adjust_logits_shape(name):
    loss = make_loss(name)
    logits = torch.randn(5, len(COUNTS))
    out = loss.adjust_logits(logits)
    assert out.shape == logits.shape and torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", LOSSES.names())
def test_cuda(name):
    loss = make_loss(name, drw_start_epoch=0).cuda()
    loss.set_class_counts(COUNTS)
    logits, targets, features = (t.cuda() for t in batch())
    cpu = call(make_loss(name, drw_start_epoch=0), *batch())
    value = call(loss, logits, targets, features)
    assert value.device.type == "cuda"
    assert value.item() == pytest.approx(cpu.item(), rel=1e-4, abs=1e-5)
    assert loss.adjust_logits(logits).device.type == "cuda"


def test_counts_required_and_checked():
    loss = create_loss(LossConfig(name="bsce"))
    logits, targets, _ = batch()
    with pytest.raises(RuntimeError, match="set_class_counts"):
        loss(logits, targets)
    loss.set_class_counts(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="4 logits"):
        loss(logits, targets)


def test_configs_load_by_name():
    cfg = build_config({"learner": {"loss": {"name": "ldam", "drw_start_epoch": 160}}})
    assert isinstance(cfg.learner.loss, LDAMLossConfig)
    assert cfg.learner.loss.max_m == 0.5 and cfg.learner.loss.s == 30.0
    assert cfg.learner.loss.drw_start_epoch == 160
    cfg = build_config({"learner": {"loss": {"name": "cb", "base": "focal", "gamma": 2}}})
    assert cfg.learner.loss == ClassBalancedLossConfig(base="focal", gamma=2.0)
    with pytest.raises(ConfigError, match="gamma"):
        build_config({"learner": {"loss": {"name": "focal", "gamma": -1}}})
    with pytest.raises(ConfigError, match="base"):
        build_config({"learner": {"loss": {"name": "cb", "base": "ldam"}}})


# ---------------------------------------------------------------------------------------------
# Each loss against a direct formula
# ---------------------------------------------------------------------------------------------


def test_bsce_equals_ce_on_logits_plus_log_counts():
    loss = make_loss("bsce")
    logits, targets, _ = batch()
    expected = F.cross_entropy(logits + COUNTS.clamp_min(1).log(), targets)
    assert loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_focal_gamma_zero_is_ce_and_gamma_two_formula():
    logits, targets, _ = batch()
    loss = make_loss("focal", gamma=0.0)
    assert loss(logits, targets).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), rel=1e-6
    )
    loss = make_loss("focal", gamma=2.0)
    p = logits.softmax(-1)[torch.arange(len(targets)), targets]
    expected = ((1 - p) ** 2 * -p.log()).mean()
    assert loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    assert FocalLossConfig().gamma == 1.0


def test_cb_weights_sum_to_num_classes_and_loss():
    counts = torch.tensor([500.0, 50.0, 5.0, 1.0])
    loss = create_loss(ClassBalancedLossConfig(beta=0.999))
    loss.set_class_counts(counts)
    w = loss.weights()
    raw = (1 - 0.999) / (1 - 0.999**counts)
    torch.testing.assert_close(w, raw / raw.sum() * 4)
    assert w.sum().item() == pytest.approx(4.0)
    logits, targets, _ = batch()
    expected = F.cross_entropy(logits, targets, weight=w)
    assert loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    # focal base, gamma 2: weighted mean of the focal terms
    focal = create_loss(ClassBalancedLossConfig(beta=0.999, base="focal", gamma=2.0))
    focal.set_class_counts(counts)
    p = logits.softmax(-1)[torch.arange(len(targets)), targets]
    terms = (1 - p) ** 2 * -p.log()
    expected = (w[targets] * terms).sum() / w[targets].sum()
    assert focal(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)


def test_cb_with_drw_defers_weights():
    loss = create_loss(ClassBalancedLossConfig(drw_start_epoch=2))
    loss.set_class_counts(COUNTS)
    loss.set_epoch(1, 4)
    assert loss.weights() is None
    loss.set_epoch(2, 4)
    torch.testing.assert_close(loss.weights(), effective_number_weights(COUNTS, 0.9999))


def test_ldam_margins_and_loss():
    counts = torch.tensor([256.0, 16.0, 1.0, 81.0])
    loss = create_loss(LDAMLossConfig())
    loss.set_class_counts(counts)
    m = loss.margins()
    assert m.max().item() == pytest.approx(0.5)
    assert m[2].item() == pytest.approx(0.5)  # rarest class
    torch.testing.assert_close(m, 0.5 * counts.pow(-0.25))  # n_min = 1, so C = 0.5
    assert (m * counts.pow(0.25)).std() < 1e-6  # proportional to n^(-1/4)
    cos = torch.rand(6, 4) * 2 - 1
    targets = torch.tensor([0, 1, 2, 3, 2, 0])
    adjusted = cos.clone()
    for i, y in enumerate(targets.tolist()):
        adjusted[i, y] -= m[y]
    expected = F.cross_entropy(30 * adjusted, targets)
    assert loss(cos, targets).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["ce", "ldam"])
def test_drw_switches_at_start_epoch(name):
    counts = torch.tensor([500.0, 50.0, 5.0, 1.0])
    cls = LOSSES.get(name).config_cls or LossConfig
    loss = create_loss(cls(name=name, drw_start_epoch=3))
    loss.set_class_counts(counts)
    logits = torch.rand(8, 4) * 2 - 1
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 3, 0])
    loss.set_epoch(2, 5)
    assert loss.weights() is None
    before = loss(logits, targets)
    loss.set_epoch(3, 5)
    raw = (1 - 0.9999) / (1 - 0.9999**counts)
    torch.testing.assert_close(loss.weights(), raw / raw.sum() * 4)
    after = loss(logits, targets)
    assert not torch.isclose(before, after)
    if name == "ce":
        expected = F.cross_entropy(logits, targets, weight=loss.weights())
        assert after.item() == pytest.approx(expected.item(), rel=1e-6)


def test_la_loss_form_and_posthoc():
    logits, targets, _ = batch()
    loss = create_loss(LogitAdjustedLossConfig(tau=1.5))
    loss.set_class_counts(COUNTS)
    expected = F.cross_entropy(logits + 1.5 * log_prior(COUNTS), targets)
    assert loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(loss.adjust_logits(logits), logits)

    post = create_loss(LogitAdjustedLossConfig(tau=1.5, posthoc=True))
    post.set_class_counts(COUNTS)
    expected = F.cross_entropy(logits, targets)
    assert post(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(post.adjust_logits(logits), logits - 1.5 * log_prior(COUNTS))
    # before any counts (e.g. evaluating a fresh model) the scores are left alone
    fresh = create_loss(LogitAdjustedLossConfig(posthoc=True))
    assert torch.equal(fresh.adjust_logits(logits), logits)


def _per_class_mean_prob(logits, targets, counts):
    p = (logits + counts.clamp_min(1).log()).softmax(-1)[torch.arange(len(targets)), targets]
    return torch.stack([p[targets == c].mean() for c in targets.unique()])


def test_gml_p1_is_minus_log_geometric_mean():
    logits, targets, _ = batch()
    loss = make_loss("gml")
    assert GMLLossConfig().p == 1.0
    pbar = _per_class_mean_prob(logits, targets, COUNTS)
    geometric_mean = pbar.prod() ** (1 / len(pbar))
    expected = -math.log(geometric_mean.item())
    assert loss(logits, targets).item() == pytest.approx(expected, rel=1e-5)


def test_gml_p2_hand_formula():
    logits, targets, _ = batch(seed=3)
    loss = make_loss("gml", p=2.0)
    pbar = _per_class_mean_prob(logits, targets, COUNTS)
    expected = ((-pbar.log()) ** 2).mean().sqrt()
    assert loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gml_extreme_logits_stay_finite():
    logits = torch.tensor([[200.0, 0.0, -200.0, 0.0], [-300.0, 0.0, 300.0, 0.0]])
    logits.requires_grad_(True)
    loss = make_loss("gml")
    value = loss(logits, torch.tensor([2, 0]))
    assert torch.isfinite(value) and value > 100
    value.backward()
    assert torch.isfinite(logits.grad).all()


def _lade_direct(logits, targets, counts, alpha, lam):
    """LADE written out with loops, following Hong et al. 2021 and the official LADELoss."""
    prior = counts.clamp_min(1) / counts.clamp_min(1).sum()
    num_classes, n = logits.shape[1], logits.shape[0]
    ce = F.cross_entropy(logits + prior.log(), targets)
    reg = 0.0
    for c in range(num_classes):
        mask = targets == c
        first = logits[mask, c].sum() / max(int(mask.sum()), 1)
        second = torch.logsumexp(logits[:, c] - prior[c].log() + math.log(1 / num_classes), 0)
        second = second - math.log(n)
        reg = reg - prior[c] * (first - second - lam * second**2)
    return ce + alpha * reg


def test_lade_matches_direct_implementation():
    logits, targets, _ = batch(seed=5)
    loss = create_loss(LADELossConfig())
    loss.set_class_counts(COUNTS)
    expected = _lade_direct(logits, targets, COUNTS, 0.1, 0.1)
    assert loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    other = create_loss(LADELossConfig(alpha=0.5, remine_lambda=0.3))
    other.set_class_counts(COUNTS)
    expected = _lade_direct(logits, targets, COUNTS, 0.5, 0.3)
    assert other(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    # prediction is prior-free: the logits as they are
    assert torch.equal(loss.adjust_logits(logits), logits)


def test_lade_any_number_of_classes():
    counts = torch.arange(1, 8, dtype=torch.float32) * 10
    loss = create_loss(LADELossConfig())
    loss.set_class_counts(counts)
    logits = torch.randn(9, 7)
    targets = torch.randint(0, 7, (9,))
    expected = _lade_direct(logits, targets, counts, 0.1, 0.1)
    assert loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)


def test_feabal_curriculum_values():
    assert FeatureBalancedLoss.curriculum(0, 10) == 0.0
    assert FeatureBalancedLoss.curriculum(5, 10) == pytest.approx(0.25)
    assert FeatureBalancedLoss.curriculum(9, 10) == pytest.approx(0.81)
    assert FeatureBalancedLoss.curriculum(100, 200) == pytest.approx(0.25)
    assert FeatureBalancedLoss.curriculum(199, 200) == pytest.approx((199 / 200) ** 2)


def test_feabal_formula_and_schedule():
    counts = torch.tensor([1000.0, 100.0, 10.0, 1.0])
    loss = create_loss(FeatureBalancedLossConfig(scale=60.0))
    loss.set_class_counts(counts)
    lam = loss.stimuli()
    torch.testing.assert_close(lam, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    logits, targets, features = batch()
    norm = features.norm(dim=1, keepdim=True)
    for epoch, alpha in ((0, 0.0), (10, 0.25), (19, 0.9025)):
        loss.set_epoch(epoch, 20)
        expected = F.cross_entropy(logits - alpha * 60.0 * lam / norm, targets)
        assert loss(logits, targets, features).item() == pytest.approx(expected.item(), rel=1e-5)
    loss.set_epoch(0, 20)
    assert loss(logits, targets, features).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), rel=1e-6
    )
    assert FeatureBalancedLoss.needs_features
    with pytest.raises(ValueError, match="features"):
        loss(logits, targets)


def test_feabal_equal_counts_is_ce():
    loss = create_loss(FeatureBalancedLossConfig())
    loss.set_class_counts(torch.full((4,), 5.0))
    loss.set_epoch(9, 10)
    logits, targets, features = batch()
    assert loss(logits, targets, features).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), rel=1e-6
    )
