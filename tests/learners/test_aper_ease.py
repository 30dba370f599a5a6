"""APER and EASE on a small random ViT: only the declared parameters change, the prototypes are
the class means they claim to be, EASE's completion and scores are its authors' formulas, and
prediction is a function of the evaluation extractor's features."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm")
from fast_options import TINY_VIT  # noqa: E402

from cilkit.config import build_config  # noqa: E402
from cilkit.engine.trainer import Trainer  # noqa: E402
from cilkit.errors import ConfigError  # noqa: E402
from cilkit.learners.aper import APER  # noqa: E402
from cilkit.learners.ease import EASE, complete_prototypes  # noqa: E402


def _config(name: str, *overrides: str):
    data = {
        "seed": 5,
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 4, "increment": 3},
        "learner": {"name": name},
        "optim": {"lr": 0.05, "scheduler": "cosine"},
        "train": {"epochs": 2, "batch_size": 64},
        "engine": {"progress": "none"},
    }
    return build_config(data, [TINY_VIT, *overrides])


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _record(monkeypatch, cls) -> list[dict]:
    """After each task: the learner, the task's context and copies of the ViT's and the PEFT
    module's tensors; the first entry is taken before the first task."""
    records: list[dict] = []
    before, after = cls.before_task, cls.after_task

    def before_task(self, ctx):
        if not records:
            vit = _vit(self)
            records.append({"vit": _state(vit.model), "peft": _state(vit.peft), "learner": self})
        before(self, ctx)

    def after_task(self, ctx):
        after(self, ctx)
        vit = _vit(self)
        records.append({"vit": _state(vit.model), "peft": _state(vit.peft), "ctx": ctx})

    monkeypatch.setattr(cls, "before_task", before_task)
    monkeypatch.setattr(cls, "after_task", after_task)
    return records


def _vit(learner):
    return learner.vit if isinstance(learner, APER) else learner.ensemble.vit


def _same(a: dict, b: dict, prefix: str = "") -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run of each method, recorded task by task."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, cls in (("aper", APER), ("ease", EASE)):
            records = _record(mp, cls)
            Trainer(_config(name), tmp_path_factory.mktemp(name), log=None).fit()
            out[name] = records
    return out


def _class_features(ctx, classes, fn):
    """Un-augmented features ``fn(x)`` of each class's training images, by class."""
    out = {}
    for c in classes:
        idx = ctx.train.indices_of([c])
        out[c] = torch.cat([fn(b.x) for b in ctx.train.eval_batches(idx, 256)])
    return out


@torch.no_grad()
def test_aper_trains_only_its_peft_module_on_the_first_task_and_nothing_after(runs):
    start, *tasks = runs["aper"]
    assert all(_same(start["vit"], t["vit"]) for t in tasks)  # the ViT never moves
    up = tasks[0]["peft"]["sets.0.0.up.weight"]
    assert up.abs().sum() > 0  # the adapter (zero at the start) was trained on task 0
    assert all(_same(tasks[0]["peft"], t["peft"]) for t in tasks[1:])  # frozen from then on


@torch.no_grad()
def test_aper_prototypes_are_class_means_of_pretrained_then_adapted_features(runs):
    learner, ctx = runs["aper"][0]["learner"], runs["aper"][-1]["ctx"]
    learner.eval()
    vit = learner.vit

    def both(x):
        with vit.peft.disabled():
            pretrained = vit(x)
        return torch.cat([pretrained, vit(x)], dim=1)

    feats = _class_features(ctx, range(learner.num_seen_classes), both)
    expected = torch.stack([feats[c].double().mean(0) for c in sorted(feats)])
    torch.testing.assert_close(learner.prototypes.means(), expected, rtol=1e-5, atol=1e-5)
    d = vit.out_dim
    assert not torch.allclose(expected[:, :d], expected[:, d:])  # two different halves
    x = next(ctx.train.eval_batches(torch.arange(6), 6)).x
    extractor = learner.evaluation_extractor()
    assert not any(p.requires_grad for p in extractor.parameters())
    assert torch.equal(learner.predict(x)["cnn"], learner.predict_features(extractor(x))["cnn"])
    expected_scores = F.normalize(both(x), dim=1) @ F.normalize(expected.float(), dim=1).T
    scores = learner.predict(x)["cnn"].float()  # SimpleCIL scores in float64
    torch.testing.assert_close(scores, expected_scores, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_ease_trains_each_tasks_adapter_in_its_task_only(runs):
    start, *tasks = runs["ease"]
    assert all(_same(start["vit"], t["vit"]) for t in tasks)
    for t, record in enumerate(tasks):
        assert record["peft"][f"sets.{t}.0.up.weight"].abs().sum() > 0  # trained in task t
        for later in tasks[t + 1 :]:
            assert _same(record["peft"], later["peft"], f"sets.{t}.")  # then frozen


@torch.no_grad()
def test_ease_new_prototypes_are_class_means_in_every_subspace_and_old_ones_completed(runs):
    learner, ctx = runs["ease"][0]["learner"], runs["ease"][-1]["ctx"]
    learner.eval()
    ensemble, d = learner.ensemble, learner.dim
    P, class_task = learner.prototypes, learner.class_task
    assert P.shape == (learner.num_seen_classes, 3, d)
    assert class_task.tolist() == [0] * 4 + [1] * 3 + [2] * 3
    for s in range(3):
        feats = _class_features(ctx, range(10), lambda x, s=s: ensemble.branch(x, s))
        for c in range(10):
            if s <= class_task[c]:  # a real prototype
                mean = feats[c].double().mean(0)
                torch.testing.assert_close(P[c, s], mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(P, _authors_completion(P, [4, 3, 3], recalc=True))
    x = next(ctx.train.eval_batches(torch.arange(6), 6)).x
    branches = learner.evaluation_extractor()  # one module per subspace, cached one by one
    assert [b.index for b in branches] == [0, 1, 2]
    assert all(a is b for a, b in zip(branches, learner.evaluation_extractor(), strict=True))
    vit_weights = sum(p.numel() for p in ensemble.vit.model.parameters())
    per_set = sum(p.numel() for p in ensemble.peft.sets[0].parameters())
    assert all(sum(p.numel() for p in b.parameters()) == vit_weights + per_set for b in branches)
    assert not any(p.requires_grad for b in branches for p in b.parameters())

    def extractor(images):
        return torch.cat([b(images) for b in branches], dim=1)

    assert torch.equal(extractor(x), ensemble(x))
    assert torch.equal(learner.predict(x)["cnn"], learner.predict_features(extractor(x))["cnn"])
    expected = _authors_scores(extractor(x), P.float(), [4, 3, 3], alpha=learner.cfg.alpha)
    torch.testing.assert_close(learner.predict(x)["cnn"], expected, rtol=1e-5, atol=1e-6)
    cfg = learner.cfg
    learner.cfg = dataclasses.replace(cfg, reweight=False)  # the code's plain self.fc(x)
    flat = F.normalize(extractor(x), dim=1) @ F.normalize(P.float().flatten(1), dim=1).T
    torch.testing.assert_close(learner.predict(x)["cnn"], flat, rtol=1e-5, atol=1e-6)
    learner.cfg = cfg


def _ranges(sizes):
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [(s, s + n) for s, n in zip(starts, sizes, strict=True)]


def _authors_completion(P, sizes, recalc, ptm=False):
    """``solve_sim_reset`` / ``solve_similarity`` of EASE's code, loop for loop, on (C, S, d)
    prototypes (``ptm``: subspace 0 is the pre-trained model's, ``use_init_ptm``)."""
    P, k = P.clone(), int(ptm)
    cur = len(sizes) - 1
    ranges, total = _ranges(sizes), sum(sizes)
    for task_id in range(cur):
        start_cls, end_cls = ranges[task_id]
        for dim_id in range(task_id + 1, cur + 1) if recalc else [cur]:
            old_start = ranges[dim_id][0] if recalc else ranges[cur][0]
            A = P[old_start:total, task_id + k]
            B = P[old_start:total, dim_id + k]
            A_hat = P[start_cls:end_cls, task_id + k]
            sim = torch.zeros(len(A_hat), len(A), dtype=P.dtype)
            for i in range(len(A_hat)):
                for j in range(len(A)):
                    sim[i][j] = torch.cosine_similarity(A_hat[i], A[j], dim=0)
            sim = F.softmax(sim, dim=1)
            B_hat = torch.zeros(len(A_hat), B.shape[1], dtype=P.dtype)
            for i in range(len(A_hat)):
                for j in range(len(A)):
                    B_hat[i] += sim[i][j] * B[j]
            P[start_cls:end_cls, dim_id + k] = B_hat
    return P


def _authors_scores(features, P, sizes, alpha, ptm=False, beta=0.0):
    """``EaseCosineLinear.forward_reweight`` of EASE's code."""
    cur, d = len(sizes) - 1, P.shape[2]
    out_all = []
    for i, (start_cls, end_cls) in enumerate(_ranges(sizes)):
        out = 0.0
        for j in range(P.shape[1]):
            x = F.normalize(features[:, j * d : (j + 1) * d], p=2, dim=1)
            w = F.normalize(P[start_cls:end_cls, j], p=2, dim=1)
            if ptm and j == 0:
                out = out + beta * F.linear(x, w)
                continue
            own = j == (i + 1 if ptm else i)
            out = out + (F.linear(x, w) if own else alpha * F.linear(x, w) / cur)
        out_all.append(out)
    return torch.cat(out_all, dim=1)


def test_ease_completion_on_a_small_case_matches_the_authors_loops_and_a_hand_value():
    torch.manual_seed(0)
    sizes, S, d = [2, 1, 2], 3, 4
    class_task = torch.tensor([0, 0, 1, 2, 2])
    P = torch.randn(5, S, d, dtype=torch.float64)
    for recalc in (True, False):
        ours = complete_prototypes(P, class_task, 0, recalc)
        torch.testing.assert_close(ours, _authors_completion(P, sizes, recalc))
        real = torch.arange(S)[None, :] <= class_task[:, None]
        assert torch.equal(ours[real], P[real])  # real prototypes are never touched
    # by hand: class 0 (task 0) in subspace 2, from the classes of task 2 only (recalc or not)
    P = torch.zeros(5, S, 2, dtype=torch.float64)
    P[0, 0] = torch.tensor([1.0, 0.0])
    P[3, 0], P[4, 0] = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 3.0])  # cosines 1 and 0
    P[3, 2], P[4, 2] = torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 1.0])
    P[2, 0] = P[2, 1] = torch.tensor([0.0, 1.0])
    done = complete_prototypes(P, class_task, 0, recalc=False)
    w = math.e / (math.e + 1)
    torch.testing.assert_close(done[0, 2], torch.tensor([2 * w - 1, 1.0], dtype=torch.float64))


def test_a_method_on_a_backbone_that_is_not_a_timm_vit_is_a_one_line_config_error(tmp_path):
    for name in ("aper", "ease"):
        cfg = build_config(
            {"data": {"name": "digits"}, "learner": {"name": name}, "backbone": "convnet4"}
        )
        with pytest.raises(ConfigError, match=f"learner '{name}' tunes a timm ViT") as err:
            Trainer(cfg, tmp_path / name, log=None).setup()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("peft", ["ssf", "vpt_shallow", "vpt_deep"])
def test_aper_with_each_peft_module_keeps_the_vit_and_trains_the_module(peft, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        records = _record(mp, APER)
        overrides = [f"learner.peft={peft}", "train.epochs=1", "scenario.increment=6"]
        Trainer(_config("aper", *overrides), tmp_path, log=None).fit()
    start, first, second = records
    assert _same(start["vit"], first["vit"]) and _same(start["vit"], second["vit"])
    assert not _same(start["peft"], first["peft"]) and _same(first["peft"], second["peft"])
    learner = start["learner"]
    assert learner.prototypes.means().shape == (10, 2 * learner.vit.out_dim)


def test_ease_with_the_pretrained_subspace_leads_with_it_and_weighs_it_by_beta(tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        records = _record(mp, EASE)
        overrides = ["learner.pretrained_subspace=true", "learner.pretrained_weight=0.5"]
        Trainer(_config("ease", "train.epochs=1", *overrides), tmp_path, log=None).fit()
    learner, ctx = records[0]["learner"], records[-1]["ctx"]
    learner.eval()
    P, ensemble = learner.prototypes, learner.ensemble
    assert P.shape == (10, 4, learner.dim)
    with torch.no_grad():
        plain = _class_features(ctx, range(10), lambda x: ensemble.branch(x, None))
        for c in range(10):  # every class has a real prototype in the pre-trained subspace
            torch.testing.assert_close(P[c, 0], plain[c].double().mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(P, _authors_completion(P, [4, 3, 3], True, ptm=True))
        x = next(ctx.train.eval_batches(torch.arange(6), 6)).x
        expected = _authors_scores(ensemble(x), P.float(), [4, 3, 3], 0.1, ptm=True, beta=0.5)
        torch.testing.assert_close(learner.predict(x)["cnn"], expected, rtol=1e-5, atol=1e-6)


def test_ease_refuses_a_peft_module_other_than_its_adapters():
    with pytest.raises(ConfigError, match="learner.peft=ssf: ease expands by adapters"):
        _config("ease", "learner.peft=ssf")
