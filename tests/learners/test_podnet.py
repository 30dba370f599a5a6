"""What makes PODNet that method: POD-spatial and POD-flat with the adaptive factor, the local
similarity classifier and its NCA loss, k-means imprinting, class-balanced classifier finetuning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_contract import tiny
from test_lucir_der_bic import _after_task, _batch, _next_task

from cilkit.backbones import CosineLinear
from cilkit.backbones.heads import LocalSimilarity
from cilkit.contract import TaskContext, task_generator
from cilkit.engine.trainer import Trainer
from cilkit.errors import ConfigError
from cilkit.learners.podnet import kmeans, nca_loss, pod_spatial

BN_STATISTICS = {"running_mean", "running_var", "num_batches_tracked"}

# ---- POD ----------------------------------------------------------------------------------------


def test_pod_spatial_by_hand_and_blind_to_a_map_scale():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    b = torch.tensor([[0.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    # squares pooled over the width (rows) and the height (columns), normalised:
    # a -> [1, 0, 1, 0] / sqrt 2, b -> [1, 0, 0, 1] / sqrt 2, distance 1
    assert pod_spatial([a], [b]).item() == pytest.approx(1.0)
    assert pod_spatial([a, a], [b, a]).item() == pytest.approx(0.5)  # the mean over stages
    maps = [torch.randn(3, 4, 5, 5), torch.randn(3, 8, 3, 3)]
    assert pod_spatial(maps, [2 * m for m in maps]).item() == pytest.approx(0.0, abs=1e-6)


def test_pod_is_zero_for_the_old_model_and_grows_when_a_stage_changes(tmp_path):
    parts = _after_task("podnet", tmp_path)
    learner = parts.learner
    ctx = _next_task(parts, 1)
    learner.old_network = learner.network.copy_frozen()  # the teacher equals the student
    learner.eval()  # both normalise with the same statistics
    batch = _batch(parts, ctx)
    out = learner.training_step(batch)
    assert out.terms["pod_spatial"].abs().item() < 1e-5
    assert out.terms["pod_flat"].abs().item() < 1e-5
    with torch.no_grad():  # change the first stage only: every later map moves too
        for p in learner.network.backbone.stages[0].parameters():
            p.add_(0.3 * torch.randn_like(p))
    out = learner.training_step(batch)
    assert out.terms["pod_spatial"].item() > 0.01 and out.terms["pod_flat"].item() > 1e-4


def test_pod_terms_are_weighted_by_sqrt_seen_over_new_classes(tmp_path):
    parts = _after_task("podnet", tmp_path, 0, "learner.pod_spatial_factor=2.0")
    learner = parts.learner
    ctx = _next_task(parts, 1)  # 4 old classes, 3 new
    assert learner.adaptive_factor == pytest.approx(math.sqrt(7 / 3))
    learner.eval()
    batch = _batch(parts, ctx)
    out = learner.training_step(batch)
    with torch.no_grad():
        f, maps = learner.network.backbone.forward_intermediates(batch.x)
        old_f, old_maps = learner.old_network.backbone.forward_intermediates(batch.x)
    spatial = pod_spatial(old_maps, maps)
    flat = 1 - F.cosine_similarity(f, old_f).mean()
    factor = math.sqrt(7 / 3)
    assert out.terms["pod_spatial"].item() == pytest.approx(factor * 2.0 * spatial.item())
    assert out.terms["pod_flat"].item() == pytest.approx(factor * 1.0 * flat.item(), rel=1e-4)


# ---- local similarity classifier and NCA --------------------------------------------------------


def test_one_proxy_per_class_is_a_scaled_shifted_cosine_head():
    torch.manual_seed(0)
    local, cosine = LocalSimilarity(8, proxies=1), CosineLinear(8)
    local.expand(3)
    cosine.expand(3)
    with torch.no_grad():
        cosine.weights[0].copy_(local.weights[0])
        local.sigma.fill_(1.7)
        cosine.sigma.fill_(2 * 1.7)  # -|x - w|^2 of unit vectors is 2 cos - 2
    x = torch.randn(5, 8)
    torch.testing.assert_close(local(x), cosine(x) - 2 * 1.7)
    torch.testing.assert_close(local(x).softmax(1), cosine(x).softmax(1))


def test_proxies_are_merged_by_a_softmax_over_their_similarities():
    head = LocalSimilarity(2, proxies=2, learn_scale=False)
    head.expand(1)
    with torch.no_grad():
        head.weights[0].copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    sims = torch.tensor([0.0, -2.0])  # x = e1: 2 cos - 2 for either proxy
    expected = (sims.softmax(0) * sims).sum()
    assert head(torch.tensor([[2.0, 0.0]])).item() == pytest.approx(expected.item())


def test_local_similarity_head_grows_in_classes_and_loads_into_a_fresh_head():
    head = LocalSimilarity(6, proxies=4)
    head.expand(3)
    head.expand(2)
    assert head.num_classes == 5 and head.weight.shape == (20, 6)
    assert head.chunk_slices() == [slice(0, 3), slice(3, 5)] and head(torch.randn(2, 6)).shape == (
        2,
        5,
    )
    fresh = LocalSimilarity(6, proxies=4)
    fresh.load_state_dict(head.state_dict())
    x = torch.randn(3, 6)
    torch.testing.assert_close(fresh(x), head(x))
    with torch.no_grad():
        head.scale_weights_(torch.tensor([1.0, 2.0, 1.0, 1.0, 3.0]))
    torch.testing.assert_close(head.weights[0][4:8], 2 * fresh.weights[0][4:8])
    torch.testing.assert_close(head.weights[1][4:8], 3 * fresh.weights[1][4:8])
    torch.testing.assert_close(head(x), fresh(x))  # cosines ignore the norms
    head.reset_rows()
    assert head.weights[1].shape == (8, 6) and not torch.equal(head.weights[1], fresh.weights[1])
    with pytest.raises(ValueError, match="proxies"):
        head.set_proxies(2)  # only while empty


def test_nca_by_hand_equals_cross_entropy_when_the_true_class_leads():
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.2, 1.5, -1.0]])
    targets = torch.tensor([0, 0])
    e = math.exp
    first = math.log(e(1.0) + e(0.5) + e(2.0)) - 2.0  # the maximum is the true class
    second = math.log(e(1.5) + e(-1.0) + e(1.5)) - 0.2  # its slot holds the maximum, 1.5
    expected = (first + second) / 2
    assert nca_loss(logits, targets).item() == pytest.approx(expected)
    assert nca_loss(logits, targets, 0.6 * 1.3).item() == pytest.approx(expected)  # cancels
    ce = F.cross_entropy(logits[:1], targets[:1]).item()
    assert nca_loss(logits[:1], targets[:1]).item() == pytest.approx(ce)
    assert nca_loss(logits[1:], targets[1:]).item() > F.cross_entropy(logits[1:], targets[1:])


# ---- imprinting -----------------------------------------------------------------------------------


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    points = (centres[:, None] + 0.1 * torch.randn(3, 40, 2, generator=g)).flatten(0, 1)
    found = kmeans(points, 3, torch.Generator().manual_seed(1))
    means = points.view(3, 40, 2).mean(1)
    assert torch.cdist(found, means).min(1).values.max() < 1e-5


def test_imprinting_puts_k_means_proxies_at_the_old_weights_norm(tmp_path):
    parts = _after_task("podnet", tmp_path)
    learner = parts.learner
    head = learner.network.head
    old = head.weights[0].detach().clone()
    assert head.rows_per_class == 10 and old.shape == (40, 16)
    info = parts.train_scenario.task_info(1)
    ctx = TaskContext(info, parts.train, task_generator(3, 1))
    state = ctx.generator.get_state()
    learner.before_task(ctx)
    assert torch.equal(ctx.generator.get_state(), state)  # a resumed task draws the same
    new = head.weights[1].detach()
    assert torch.equal(head.weights[0], old) and new.shape == (30, 16)
    norms = new.norm(dim=1)
    torch.testing.assert_close(norms, old.norm(dim=1).mean().expand_as(norms))
    # the first new class's proxies: k-means of its normalised features, drawn from the task's
    # generator, as directions
    features = learner.features_fn(ctx)(ctx.class_indices(info.new_classes[0]))
    generator = torch.Generator().manual_seed(0)
    generator.set_state(state)
    centres = kmeans(F.normalize(features, dim=1).cpu(), 10, generator)
    torch.testing.assert_close(F.normalize(new[:10], dim=1), F.normalize(centres, dim=1))
    assert torch.cdist(centres, centres).topk(2, largest=False).values[:, 1].min() > 1e-3


# ---- class-balanced finetuning and the config -----------------------------------------------------


def test_finetuning_trains_every_class_s_proxies_only_on_the_balanced_memory(tmp_path, monkeypatch):
    import cilkit.engine.trainer as trainer_mod

    snapshots = []
    original = trainer_mod.run_stage

    def run_stage(run, stage, *args, **kwargs):
        state = run.learner.state_dict
        before = {k: v.clone() for k, v in state().items() if k.startswith("network.")}
        original(run, stage, *args, **kwargs)
        after = {k: v.clone() for k, v in state().items() if k.startswith("network.")}
        labels = run.parts.train.targets_cpu[stage.indices]
        snapshots.append((stage.name, torch.bincount(labels), before, after, run.learner))

    monkeypatch.setattr(trainer_mod, "run_stage", run_stage)
    Trainer(tiny("podnet", "learner.finetune_epochs=2"), tmp_path, log=None).fit(stop_after_task=1)
    ((name, counts, before, after, learner),) = snapshots  # task 1 only: none after the first
    assert name == "class-balanced finetuning" and len(counts) == 7
    assert (counts == counts[0]).all()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    params = {f"network.{n}" for n, _ in learner.network.named_parameters()}
    assert changed & params == {"network.head.weights.0", "network.head.weights.1"}
    buffers = changed - params  # batch-norm statistics follow the set, as in the authors' code
    assert buffers and all(
        k.startswith("network.backbone.") and k.rsplit(".", 1)[1] in BN_STATISTICS for k in buffers
    )
    teacher = learner.old_network.state_dict()
    for key, value in learner.network.backbone.state_dict().items():  # the finetuned model
        assert torch.equal(teacher[f"module.backbone.{key}"], value), key


def test_config_is_validated():
    with pytest.raises(ConfigError, match="learner.proxies=0: must be >= 1"):
        tiny("podnet", "learner.proxies=0")
    with pytest.raises(ConfigError, match="loss: PODNet trains with its NCA loss"):
        tiny("podnet", "learner.loss.name=bsce")
    learner = tiny("podnet").learner  # the authors' CIFAR-100 options
    assert learner.proxies == 10 and learner.nca_margin == 0.6 and learner.finetune_lr == 0.05
    assert learner.pod_spatial_factor == 3.0 and learner.pod_flat_factor == 1.0
