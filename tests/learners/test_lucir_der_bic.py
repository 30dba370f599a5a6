"""What makes LUCIR, DER and BiC those methods."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_contract import tiny

from cilkit.contract import Batch
from cilkit.engine.checkpoint import latest_checkpoint, load_checkpoint
from cilkit.engine.trainer import Trainer


def _after_task(name: str, tmp_path, task: int = 0, *overrides: str):
    """The learner as the checkpoint after ``task`` left it, ready for the next task."""
    cfg = tiny(name, *overrides)
    trainer = Trainer(cfg, tmp_path, log=None)
    trainer.fit(stop_after_task=task)
    parts = trainer.setup()
    state = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    parts.learner.load_state_dict(state["learner"])
    return parts


def _next_task(parts, task: int):
    from cilkit.contract import TaskContext, task_generator

    info = parts.train_scenario.task_info(task)
    ctx = TaskContext(info, parts.train, task_generator(3, task))
    parts.learner.before_task(ctx)
    ctx.indices = parts.learner.train_indices(ctx)
    return ctx


def _batch(parts, ctx, n: int = 64) -> Batch:
    idx = ctx.indices[torch.randperm(len(ctx.indices), generator=torch.Generator().manual_seed(0))]
    return next(parts.train.train_batches(idx[:n], n, torch.Generator().manual_seed(1)))


# ---- LUCIR -----------------------------------------------------------------------------------


def test_lucir_less_forget_is_zero_when_the_network_equals_the_old_one(tmp_path):
    parts = _after_task("lucir", tmp_path)
    learner = parts.learner
    ctx = _next_task(parts, 1)
    learner.old_network = learner.network.copy_frozen()  # the teacher equals the student
    learner.eval()  # both normalise with the same statistics
    out = learner.training_step(_batch(parts, ctx))
    assert out.terms["less_forget"].abs().item() < 1e-6
    assert learner.lamda == pytest.approx(5.0 * (4 / 3) ** 0.5)


def test_lucir_margin_involves_old_class_samples_and_new_class_scores_only():
    from cilkit.learners.lucir import LUCIR, LUCIRConfig

    learner = LUCIR.__new__(LUCIR)
    torch.nn.Module.__init__(learner)
    learner.cfg = LUCIRConfig(K=2, dist=0.5)
    learner.num_old_classes = 3
    cos = torch.zeros(4, 6, requires_grad=True)
    targets = torch.tensor([0, 2, 4, 5])  # two old-class samples, two new-class samples
    with torch.no_grad():
        cos[0, 0], cos[1, 2] = 0.9, 0.1
        cos[:, 3:] = torch.tensor([0.2, 0.3, 0.1])
    loss = learner.margin_ranking(cos, targets)
    # sample 0: relu(0.5 - 0.9 + 0.3) + relu(0.5 - 0.9 + 0.2) = 0; sample 1: 0.7 + 0.6
    assert loss.item() == pytest.approx((0.0 + 0.0 + 0.7 + 0.6) / 4)
    loss.backward()
    touched = cos.grad.nonzero().tolist()
    assert all(row in (0, 1) for row, _ in touched)  # only old-class samples
    assert all(col == targets[row] or col >= 3 for row, col in touched)
    assert learner.margin_ranking(cos[2:], targets[2:]).item() == 0.0  # no old-class sample


def test_lucir_freezes_old_class_weights_and_imprints_new_ones(tmp_path):
    parts = _after_task("lucir", tmp_path)
    learner = parts.learner
    old_rows = learner.network.head.weights[0].detach().clone()
    ctx = _next_task(parts, 1)
    params = learner.configure_training(ctx)
    head = learner.network.head
    assert not head.weights[0].requires_grad and head.weights[1].requires_grad
    assert head.sigma.requires_grad and all(p.requires_grad for p in params)
    assert torch.equal(head.weights[0], old_rows)
    norms = head.weights[1].norm(dim=1)
    assert torch.allclose(norms, old_rows.norm(dim=1).mean().expand_as(norms), rtol=1e-5)
    assert not learner.network.backbone.last_relu  # features before the last ReLU


# ---- DER -------------------------------------------------------------------------------------


def test_der_adds_a_frozen_extractor_per_task(tmp_path):
    from cilkit.backbones import Frozen

    parts = _after_task("der", tmp_path)
    learner = parts.learner
    assert len(learner.network.branches) == 1 and learner.network.feature_dim == 16
    ctx = _next_task(parts, 1)
    net = learner.network
    assert len(net.branches) == 2 and net.feature_dim == 32 and net.head.in_features == 32
    assert isinstance(net.branches[0], Frozen)
    old = {k: v.clone() for k, v in net.branches[0].state_dict().items()}
    learner.train()
    assert not net.branches[0].training
    out = learner.training_step(_batch(parts, ctx))
    out.loss.backward()
    assert all(p.grad is None for p in net.branches[0].parameters())
    assert all(p.grad is not None for p in net.branches[1].parameters())
    assert "aux" in out.terms and learner.aux_head.num_classes == 3 + 1
    for key, value in net.branches[0].state_dict().items():  # BN statistics did not move
        assert torch.equal(value, old[key]), key


def test_a_learned_scale_that_inverts_the_classifier_is_warned_of_after_the_task(tmp_path, caplog):
    parts = _after_task("lucir", tmp_path)
    learner = parts.learner
    ctx = _next_task(parts, 1)
    features = torch.randn(6, learner.network.head.in_features)
    ranks = learner.network.head(features).argsort(dim=1)
    with caplog.at_level("WARNING", logger="cilkit"):
        learner.after_task(ctx)
    assert "sigma" not in caplog.text
    with torch.no_grad():
        learner.network.head.sigma.fill_(-1.5)
    assert (learner.network.head(features).argsort(dim=1) == ranks.flip(1)).all()  # inverted
    with caplog.at_level("WARNING", logger="cilkit"):
        learner.after_task(ctx)  # the base learner's after_task checks any learned scale
    assert "task 1" in caplog.text and "-1.5" in caplog.text and "cosine_scale" in caplog.text


# ---- BiC -------------------------------------------------------------------------------------


def test_bic_bias_stage_changes_only_alpha_and_beta_and_old_logits_stay(tmp_path, monkeypatch):
    import cilkit.engine.trainer as trainer_mod

    snapshots = []
    original = trainer_mod.run_stage

    def run_stage(run, stage, *args, **kwargs):
        before = {k: v.clone() for k, v in run.learner.state_dict().items() if "." in k}
        original(run, stage, *args, **kwargs)
        after = {k: v.clone() for k, v in run.learner.state_dict().items() if "." in k}
        snapshots.append((stage.name, stage.indices, before, after))

    monkeypatch.setattr(trainer_mod, "run_stage", run_stage)
    Trainer(tiny("bic"), tmp_path, log=None).fit(stop_after_task=1)
    ((name, held_out, before, after),) = snapshots
    assert name == "bias correction" and 0 < len(held_out) < 40
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"bias.alphas.1", "bias.betas.1"}
    # the correction of task 1 acts on task 1's classes only
    from cilkit.components.calibration import TaskBias

    bias = TaskBias()
    bias.add_task()
    bias.add_task()
    bias.load_state_dict({k[len("bias.") :]: v for k, v in after.items() if k.startswith("bias.")})
    logits = torch.randn(5, 7)
    corrected = bias(logits, [slice(0, 4), slice(4, 7)])
    assert torch.equal(corrected[:, :4], logits[:, :4])
    alpha, beta = after["bias.alphas.1"], after["bias.betas.1"]
    torch.testing.assert_close(corrected[:, 4:], logits[:, 4:] * alpha + beta)


def test_bic_stage_penalises_beta_only_and_sees_unaugmented_images(tmp_path):
    """The authors' code: cross-entropy + 0.1 * beta^2 / 2, alpha free, no augmentation."""
    parts = _after_task("bic", tmp_path)
    learner = parts.learner
    ctx = _next_task(parts, 1)
    (stage,) = learner.stages(ctx, "after_training")
    assert stage.augment is False and stage.optim.weight_decay == 0.0
    learner.bias.alphas[-1].data.fill_(3.0)
    learner.bias.betas[-1].data.fill_(2.0)
    batch = _batch(parts, ctx)
    out = stage.step(batch)
    ce = F.cross_entropy(learner.head_logits(learner.network.forward_features(batch.x)), batch.y)
    torch.testing.assert_close(out.loss, ce + 0.1 * 2.0**2 / 2)
    out.loss.backward()
    alpha_grad = learner.bias.alphas[-1].grad.clone()
    learner.bias.alphas[-1].grad = learner.bias.betas[-1].grad = None
    ce.backward()
    torch.testing.assert_close(learner.bias.alphas[-1].grad, alpha_grad)  # alpha: no penalty


def test_bic_holds_out_the_same_share_of_every_class(tmp_path):
    parts = _after_task("bic", tmp_path)
    learner = parts.learner
    ctx = _next_task(parts, 1)
    held = parts.train.targets_cpu[learner.held_out]
    counts = torch.bincount(held, minlength=7)
    assert (counts == counts[0]).all() and counts[0] >= 1
    assert not torch.isin(learner.held_out, ctx.indices).any()
    again = _next_task(_after_task("bic", tmp_path / "again"), 1)  # the same draw on a restart
    assert torch.equal(again.indices, ctx.indices)
    assert F.one_hot(held, 7).sum(0).tolist() == counts.tolist()


# ---- LwF and EWC -----------------------------------------------------------------------------


def test_lwf_is_finetune_plus_distillation(tmp_path):
    """With the distillation weighted 0, LwF is finetune exactly; with it, old classes stay."""
    plain = Trainer(tiny("finetune"), tmp_path / "ft", log=None).fit()
    no_kd = Trainer(tiny("lwf", "learner.kd_weight=0"), tmp_path / "nokd", log=None).fit()
    assert no_kd["accuracy_matrix"] == plain["accuracy_matrix"]
    lwf = Trainer(tiny("lwf"), tmp_path / "lwf", log=None).fit()
    assert lwf["accuracy_matrix"] != plain["accuracy_matrix"]


def test_lwf_warmup_trains_only_the_new_classes_weights(tmp_path, monkeypatch):
    import cilkit.engine.trainer as trainer_mod

    snapshots = []
    original = trainer_mod.run_stage

    def run_stage(run, stage, *args, **kwargs):
        before = {k: v.clone() for k, v in run.learner.state_dict().items() if "." in k}
        original(run, stage, *args, **kwargs)
        after = {k: v.clone() for k, v in run.learner.state_dict().items() if "." in k}
        snapshots.append((before, after))

    monkeypatch.setattr(trainer_mod, "run_stage", run_stage)
    Trainer(tiny("lwf", "learner.warmup_epochs=2"), tmp_path, log=None).fit(stop_after_task=1)
    ((before, after),) = snapshots  # task 1 only: the first task has nothing to warm up
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"network.head.weights.1", "network.head.biases.1"}


def test_ewc_penalty_is_zero_at_the_optimum_and_grows_away_from_it(tmp_path):
    parts = _after_task("ewc", tmp_path)
    learner = parts.learner
    anchored = learner.anchor.items()
    assert anchored and all((fisher >= 0).all() for _, _, fisher in anchored)
    assert all(fisher.max() <= 1e-4 for _, _, fisher in anchored)  # PyCIL's clamp
    assert learner.penalty().item() == 0.0
    _next_task(parts, 1)  # a new chunk of head rows: not anchored
    names = {name for name, _, _ in learner.anchor.items()}
    assert "network.head.weights.1" not in {f"network.{n}" for n in names}
    assert learner.penalty().item() == 0.0
    with torch.no_grad():
        for p in learner.network.parameters():
            p.add_(0.1)
    assert learner.penalty().item() > 0.0


# ---- GDumb -----------------------------------------------------------------------------------


def test_gdumb_model_depends_only_on_the_memory(tmp_path, monkeypatch):
    """Whatever the network was before a task, GDumb's model after it is the same: it is
    re-initialised and trained on the memory alone."""
    from cilkit.learners.gdumb import GDumb

    args = ("memory.selection=class_balanced", "learner.epochs=3")
    expected = Trainer(tiny("gdumb", *args), tmp_path / "a", log=None).fit()
    original = GDumb.before_task

    def perturbed(self, ctx):
        original(self, ctx)
        with torch.no_grad():
            for p in self.network.parameters():
                p.add_(0.5)

    monkeypatch.setattr(GDumb, "before_task", perturbed)
    summary = Trainer(tiny("gdumb", *args), tmp_path / "b", log=None).fit()
    assert summary["accuracy_matrix"] == expected["accuracy_matrix"]
    records = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert all('"train_loss": null' in r for r in records)  # nothing trained on the stream


# ---- IL2M and EEIL ---------------------------------------------------------------------------


def test_il2m_rectifies_only_old_class_scores_of_new_class_predictions(tmp_path):
    parts = _after_task("il2m", tmp_path, 1)
    learner = parts.learner
    learner.eval()
    x = next(parts.test.eval_batches(torch.arange(len(parts.test))[:256], 256)).x
    out = learner.predict(x)
    raw = F.softmax(out["cnn"].float(), dim=1)
    old = learner.num_old_classes
    torch.testing.assert_close(out["il2m"][:, old:], raw[:, old:])  # new classes: unchanged
    new_top = raw.argmax(1) >= old
    torch.testing.assert_close(out["il2m"][~new_top], raw[~new_top])  # old-class predictions
    assert not torch.allclose(out["il2m"][new_top, :old], raw[new_top, :old])
    assert len(learner.confidence) == 2 and len(learner.init_mean) == 7


def test_eeil_finetunes_on_the_balanced_memory_and_distils_from_the_finetuned_model(
    tmp_path, monkeypatch
):
    import cilkit.engine.trainer as trainer_mod

    seen = []
    original = trainer_mod.run_stage

    def run_stage(run, stage, *args, **kwargs):
        labels = run.parts.train.targets_cpu[stage.indices]
        seen.append((stage.name, torch.bincount(labels)))
        original(run, stage, *args, **kwargs)
        seen.append(run.learner.old_network)

    monkeypatch.setattr(trainer_mod, "run_stage", run_stage)
    trainer = Trainer(tiny("eeil", "learner.finetune_epochs=2"), tmp_path, log=None)
    trainer.fit(stop_after_task=1)
    (name, counts), teacher = seen
    assert name == "balanced finetuning" and len(counts) == 7 and (counts == counts[0]).all()
    state = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))["learner"]
    for key, value in teacher.state_dict().items():  # the next teacher is the finetuned model
        assert torch.equal(value, state[f"network.{key[len('module.') :]}"]), key
