"""What makes PaCo that method: class centres inside a supervised contrastive softmax, a
momentum key encoder, a FIFO queue of labelled keys, and the authors' strong CIFAR views."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_contract import tiny

from cilkit.config.schema import FieldError
from cilkit.contract import TaskContext, task_generator
from cilkit.data import strong_augment as S
from cilkit.engine.trainer import Trainer
from cilkit.learners.paco import PaCoConfig
from cilkit.losses import paco_loss

# ---- the loss ---------------------------------------------------------------------------------


def test_paco_loss_matches_a_hand_computation() -> None:
    # 2 anchors (queries), 2 keys, 2 queue slots (the last one empty); 2 classes, 2-d features.
    s = 1 / math.sqrt(2)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s], [0.0, 1.0], [1.0, 0.0], [s, -s]])
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    valid = torch.tensor([True] * 5 + [False])
    sup = torch.tensor([[2.0, 0.5], [0.0, 1.0]])
    prior = torch.tensor([math.log(0.8), math.log(0.2)])
    a, b, g, t = 0.5, 1.0, 2.0, 0.5
    loss = paco_loss(feats, labels, 2, sup, a, b, g, t, log_prior=prior, valid=valid)
    # anchor 0 (class 0): centres 2+log .8, .5+log .2; samples j=1..4: 0, s/t, 0, 1/t
    # positives: centre 0 (weight b), key j=2 (same class, weight a); j=5 is an empty slot
    c0 = [2 + math.log(0.8), 0.5 + math.log(0.2)]
    s0 = [0.0, s / t, 0.0, 1 / t]
    z0 = math.exp(c0[0]) + math.exp(c0[1]) + g * sum(math.exp(v) for v in s0)
    l0 = -(b * (c0[0] - math.log(z0)) + a * (s0[1] - math.log(z0))) / (a + b)
    # anchor 1 (class 1): samples j=0,2,3,4: 0, s/t, 1/t, 0; positives: centre 1, j=3, j=4
    c1 = [0 + math.log(0.8), 1 + math.log(0.2)]
    s1 = [0.0, s / t, 1 / t, 0.0]
    z1 = math.exp(c1[0]) + math.exp(c1[1]) + g * sum(math.exp(v) for v in s1)
    l1 = -(b * (c1[1] - math.log(z1)) + a * (s1[2] - math.log(z1)) + a * (s1[3] - math.log(z1)))
    l1 /= b + 2 * a
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_paco_loss_without_samples_is_cross_entropy_on_the_centres() -> None:
    torch.manual_seed(0)
    sup, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 1])
    feats = F.normalize(torch.randn(5, 8), dim=1)
    loss = paco_loss(feats, y, 5, sup, alpha=0.0, gamma=0.0, temperature=1.0)
    assert loss.item() == pytest.approx(F.cross_entropy(sup, y).item(), rel=1e-5)
    prior = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    adjusted = paco_loss(feats, y, 5, sup, 0.0, gamma=0.0, temperature=1.0, log_prior=prior)
    assert adjusted.item() == pytest.approx(F.cross_entropy(sup + prior, y).item(), rel=1e-5)


# ---- the learner ------------------------------------------------------------------------------


def _learner(tmp_path, *overrides: str):
    parts = Trainer(tiny("paco", *overrides), tmp_path, log=None).setup()
    ctx = TaskContext(parts.train_scenario.task_info(0), parts.train, task_generator(3, 0))
    parts.learner.before_task(ctx)
    ctx.indices = parts.learner.train_indices(ctx)
    parts.learner.before_training(ctx, ctx.indices)
    parts.learner.configure_training(ctx)
    parts.learner.train()
    return parts, ctx


def _batch(parts, ctx, n: int = 16, seed: int = 0):
    learner = parts.learner
    gen = torch.Generator().manual_seed(seed)
    idx = ctx.indices[torch.randperm(len(ctx.indices), generator=gen)[:n]]
    batch = next(
        parts.train.train_batches(
            idx, n, gen, gen, raw=learner.needs_raw_batch, views=learner.num_views
        )
    )
    return learner.transform_batch(batch, torch.Generator().manual_seed(seed))


def test_paco_centres_are_the_classifier_in_the_contrastive_softmax(tmp_path) -> None:
    parts, ctx = _learner(tmp_path)
    learner = parts.learner
    batch = _batch(parts, ctx)
    before = learner.queue.clone(), learner.queue_labels.clone(), learner.queue_ptr.clone()
    out = learner.training_step(batch)
    out.loss.backward()
    head = list(learner.network.head.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    assert all(p.grad is not None for p in learner.projector.parameters())
    # the same batch and queue, other centres: another loss
    learner.queue.copy_(before[0]), learner.queue_labels.copy_(before[1])
    learner.queue_ptr.copy_(before[2])
    with torch.no_grad():
        head[0].mul_(2.0)
    assert learner.training_step(batch).loss.item() != pytest.approx(out.loss.item())


def test_paco_queue_is_fifo_with_labels(tmp_path) -> None:
    parts, ctx = _learner(tmp_path, "learner.queue_size=5", "learner.proj_dim=2")
    learner = parts.learner
    assert learner.queue_labels.tolist() == [-1] * 5  # empty slots take no part
    keys = torch.arange(14.0).view(7, 2)
    learner.enqueue(keys[:3], torch.tensor([0, 1, 2]))
    assert learner.queue_labels.tolist() == [0, 1, 2, -1, -1] and int(learner.queue_ptr) == 3
    learner.enqueue(keys[3:], torch.tensor([3, 0, 1, 2]))  # wraps: the two oldest go
    assert learner.queue_labels.tolist() == [1, 2, 2, 3, 0] and int(learner.queue_ptr) == 2
    assert torch.equal(learner.queue, keys[[5, 6, 2, 3, 4]])
    batch = _batch(parts, ctx, n=4)
    learner.training_step(batch)  # a step enqueues its own keys with their labels
    slots = [(2 + i) % 5 for i in range(4)]
    assert learner.queue_labels[slots].tolist() == batch.y.tolist()
    assert torch.allclose(learner.queue[slots], learner.keys(batch.views[0]))
    learner.before_task(ctx)  # a new task starts with an empty queue
    assert learner.queue_labels.tolist() == [-1] * 5


def test_paco_key_encoder_gets_no_gradient_and_moves_by_the_ema(tmp_path) -> None:
    parts, ctx = _learner(tmp_path, "learner.momentum=0.9")
    learner = parts.learner
    key = list(learner.key_encoder.parameters())
    trained = {id(p) for p in learner.configure_training(ctx)}
    assert not any(id(p) in trained for p in key)
    assert all(not p.requires_grad for p in key)
    assert learner.key_encoder.training  # MoCo's key encoder normalises with batch statistics
    learner.training_step(_batch(parts, ctx)).loss.backward()
    assert all(p.grad is None for p in key)
    query = [p for m in learner.query_modules() for p in m.parameters()]
    assert all(torch.equal(k, q) for k, q in zip(key, query, strict=True))  # starts as a copy
    with torch.no_grad():
        for q in query:
            q.add_(torch.randn_like(q))
    old = [k.detach().clone() for k in key]
    learner.after_step()
    for k, k0, q in zip(key, old, query, strict=True):
        torch.testing.assert_close(k, 0.9 * k0 + 0.1 * q.detach(), rtol=0, atol=1e-6)
        assert not torch.equal(k, k0)


def test_paco_preset_views_come_from_the_engine(tmp_path) -> None:
    parts, ctx = _learner(tmp_path, "learner.augment=preset")
    learner = parts.learner
    assert (learner.needs_raw_batch, learner.num_views) == (False, 2)
    batch = _batch(parts, ctx)
    assert batch.raw is None and len(batch.views) == 1
    assert torch.isfinite(learner.training_step(batch).loss)


@pytest.mark.parametrize(
    ("key", "value"),
    [("beta", 0.0), ("alpha", -1.0), ("temperature", 0.0), ("momentum", 1.5), ("proj_dim", 0)],
)
def test_paco_refuses_impossible_options(key, value) -> None:
    with pytest.raises(FieldError, match=key):
        PaCoConfig(**{key: value})


def test_paco_refuses_another_classification_loss() -> None:
    from cilkit.config.schema import LossConfig

    with pytest.raises(FieldError, match="loss"):
        PaCoConfig(loss=LossConfig(name="bsce"))


# ---- the strong augmentation ------------------------------------------------------------------


def _images(b: int = 6, c: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, size, size), generator=torch.Generator().manual_seed(5)).to(
        torch.uint8
    )


@pytest.mark.parametrize("view", [S.paco_strong_view, S.simclr_cifar_view, S.cifar_autoaugment])
@pytest.mark.parametrize("channels", [3, 1])
def test_strong_views_are_deterministic_keep_shape_and_change_images(view, channels) -> None:
    x = _images(c=channels)
    a = view(x, torch.Generator().manual_seed(1))
    b = view(x, torch.Generator().manual_seed(1))
    c = view(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.dtype == torch.uint8  # uint8 keeps 0..255
    assert not torch.equal(a, c)
    assert (a != x).float().mean() > 0.3


def test_cutout_zeroes_one_clipped_square() -> None:
    x = torch.full((50, 1, 32, 32), 200, dtype=torch.uint8)
    out = S.cutout(x, 16, torch.Generator().manual_seed(0))
    holes = (out == 0).sum((1, 2, 3))
    assert holes.max() == 256 and holes.min() > 0  # 16 x 16 at most, clipped at the borders
    assert set(out.unique().tolist()) == {0, 200}


@pytest.mark.parametrize(
    ("op", "mag", "sign", "pil"),
    [
        ("invert", 0.0, 1, lambda im, ops, enh: ops.invert(im)),
        ("posterize", 5.0, 1, lambda im, ops, enh: ops.posterize(im, 5)),
        ("solarize", 100.0, 1, lambda im, ops, enh: ops.solarize(im, 100)),
        ("autocontrast", 0.0, 1, lambda im, ops, enh: ops.autocontrast(im)),
        ("equalize", 0.0, 1, lambda im, ops, enh: ops.equalize(im)),
        ("contrast", 0.6, -1, lambda im, ops, enh: enh.Contrast(im).enhance(0.4)),
        ("color", 0.6, 1, lambda im, ops, enh: enh.Color(im).enhance(1.6)),
        ("brightness", 0.6, 1, lambda im, ops, enh: enh.Brightness(im).enhance(1.6)),
        ("sharpness", 0.8, -1, lambda im, ops, enh: enh.Sharpness(im).enhance(0.2)),
        ("rotate", 20.0, 1, lambda im, ops, enh: im.rotate(20, fillcolor=(128,) * 3)),
        (
            "translateX",
            0.3,
            1,
            lambda im, ops, enh: im.transform(
                im.size, 0, (1, 0, 4.8, 0, 1, 0), fillcolor=(128,) * 3
            ),
        ),
    ],
)
def test_autoaugment_ops_equal_pil(op, mag, sign, pil) -> None:
    Image = pytest.importorskip("PIL.Image")
    from PIL import ImageEnhance, ImageOps

    x = _images(b=3)
    x[1] = x[1] // 4 + 60  # a low-contrast image
    ours = S._apply(x.float(), op, torch.full((3,), mag), torch.full((3,), float(sign)))
    for i in range(3):
        im = Image.fromarray(x[i].permute(1, 2, 0).numpy())
        ref = torch.tensor(np.asarray(pil(im, ImageOps, ImageEnhance))).permute(2, 0, 1)
        assert torch.equal(ours[i], ref.float()), op


def test_hue_jitter_equals_torchvision() -> None:
    tf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = _images(b=4, size=8).float()
    shift = torch.tensor([0.1, -0.1, 0.05, 0.0])
    ours = S._hue(x, shift)
    ref = torch.stack([tf.adjust_hue(x[i] / 255, float(shift[i])) * 255 for i in range(4)])
    assert (ours - ref.round()).abs().max() <= 1
    assert (ours - x).abs().max() > 10
