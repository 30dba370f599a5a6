"""Every registered learner, end to end on real (bundled) digits, plus method behaviour."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fast_options import fast_overrides

from cilkit.backbones import ExpandableLinear
from cilkit.components.weight_align import align_weights
from cilkit.config import build_config, load_config
from cilkit.engine.trainer import Trainer
from cilkit.learners import LEARNERS


def tiny(name: str, *overrides: str, tasks: str = "4,3"):
    first, inc = tasks.split(",")
    learner = LEARNERS.get(name).obj
    data = {
        "seed": 0,
        "data": {"name": "digits"},
        "scenario": {"initial_increment": int(first), "increment": int(inc)},
        "backbone": {"name": "convnet4", "hidden": 32},
        "learner": {"name": name},
        "optim": {"lr": 0.05, "scheduler": "constant", "weight_decay": 0.0},
        "train": {"epochs": 3, "batch_size": 64},
        "engine": {"progress": "none"},
    }
    if learner.needs_memory:
        data["memory"] = {"memory_size": 60}
    return build_config(data, [*fast_overrides(name), *overrides])


@dataclass
class WatchedRun:
    """A run of ``tiny(name)`` and what its frozen parts did during training."""

    dir: Path
    summary: dict
    frozen: list[dict]  # per frozen module: its state at its first and last step, its modes
    teachers: int  # distinct teachers seen


def _watched_run(name: str, run_dir: Path) -> WatchedRun:
    cls = LEARNERS.get(name).obj
    original = cls.training_step
    seen: dict[int, dict] = {}
    teachers: set[int] = set()

    def training_step(self, batch):
        out = original(self, batch)
        if self.old_network is not None:
            teachers.add(id(self.old_network))
        for module in self.frozen_modules():
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            # the record holds the module, so its id is not reused by a later one
            record = seen.setdefault(id(module), {"first": state, "modes": set(), "m": module})
            record["last"] = state
            record["modes"].update(m.training for m in module.modules())
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cls, "training_step", training_step)
        summary = Trainer(tiny(name), run_dir, log=None).fit()
    frozen = [{k: v for k, v in r.items() if k != "m"} for r in seen.values()]
    assert teachers <= seen.keys()  # every teacher is a frozen part
    return WatchedRun(run_dir, summary, frozen, len(teachers))


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    """One watched run per learner, shared by the tests that read it."""
    runs: dict[str, WatchedRun] = {}

    def get(name: str) -> WatchedRun:
        if name not in runs:
            runs[name] = _watched_run(name, tmp_path_factory.mktemp(f"watched-{name}"))
        return runs[name]

    return get


@pytest.mark.parametrize("name", LEARNERS.names())
def test_every_learner_writes_a_complete_run_directory(name, watched_run):
    run = watched_run(name)
    cfg, summary, tmp_path = tiny(name), run.summary, run.dir
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in records] == [0, 1, 2]
    assert [r["num_seen_classes"] for r in records] == [4, 7, 10]
    for r in records:
        for key in (
            "accuracy",
            "accuracy_top5",
            "old_accuracy",
            "new_accuracy",
            "accuracy_per_task",
            "train_seconds",
        ):
            assert key in r
        assert 0 <= r["accuracy"] <= 100 and r["accuracy_top5"] >= r["accuracy"]
        assert len(r["accuracy_per_task"]) == r["task_id"] + 1
    assert records[0]["old_accuracy"] is None
    m = summary["accuracy_matrix"]
    assert len(m) == 3 and all(len(row) == 3 for row in m)
    assert m[0][1] is None and m[0][2] is None and m[1][2] is None and m[2][0] is not None
    for key in (
        "avg_incremental_accuracy",
        "last_accuracy",
        "forgetting",
        "backward_transfer",
        "task_accuracy",
    ):
        assert key in summary
    assert summary["last_accuracy"] == records[-1]["accuracy"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["avg_incremental_accuracy"] == pytest.approx(
        sum(r["accuracy"] for r in records) / 3
    )
    learner = LEARNERS.get(name).obj
    if learner.needs_memory:
        assert 0 < records[-1]["memory_size"] <= 60
    if learner.needs_memory and learner.memory_selection is None:  # exemplars: class means
        assert "accuracy_nme" in records[-1] and "nme_accuracy_matrix" in saved
    assert (tmp_path / "plots" / "accuracy.png").stat().st_size > 0
    assert "summary (accuracies in %)" in (tmp_path / "log.txt").read_text()
    assert (tmp_path / "plots" / "accuracy_matrix.png").stat().st_size > 0
    assert load_config(tmp_path / "config.yaml") == cfg


def test_same_seed_same_result(tmp_path):
    a = Trainer(tiny("icarl"), tmp_path / "a", log=None).fit()
    b = Trainer(tiny("icarl"), tmp_path / "b", log=None).fit()
    for key in ("accuracy_matrix", "nme_accuracy_matrix", "task_accuracy"):
        assert a[key] == b[key]


@pytest.fixture(scope="module")
def two_task_runs(tmp_path_factory):
    """finetune (both forms), replay and iCaRL on digits: 5 classes, then 5 more, 12 epochs each."""
    out = {}
    runs = {
        "finetune": ("learner.name=finetune",),
        "finetune_all_seen": ("learner.name=finetune", "learner.new_classes_only=false"),
        "replay": ("learner.name=replay", "memory.memory_size=100"),
        "icarl": ("learner.name=icarl", "memory.memory_size=100"),
    }
    for key, overrides in runs.items():
        cfg = tiny("finetune", "train.epochs=12", *overrides, tasks="5,5")
        out[key] = Trainer(cfg, tmp_path_factory.mktemp(key), log=None).fit()
    return out


def _old_accuracy(summary):
    return summary["accuracy_matrix"][1][0]


def test_finetune_forgets_old_classes(two_task_runs):
    for key, most in (("finetune", 50), ("finetune_all_seen", 15)):
        s = two_task_runs[key]
        assert s["accuracy_matrix"][0][0] > 90  # it had learned them
        assert _old_accuracy(s) < most  # and lost most of them
    # CE over every seen class also pushes the old classes' logits down: it forgets more
    assert _old_accuracy(two_task_runs["finetune_all_seen"]) < _old_accuracy(
        two_task_runs["finetune"]
    )


@pytest.mark.parametrize("name", ["replay", "icarl"])
def test_replay_and_icarl_keep_old_classes(two_task_runs, name):
    assert _old_accuracy(two_task_runs[name]) > 70
    assert _old_accuracy(two_task_runs[name]) > _old_accuracy(two_task_runs["finetune"]) + 40


def test_icarl_nme_classifier_is_reported(two_task_runs):
    s = two_task_runs["icarl"]
    assert s["nme_last_accuracy"] > 70


@pytest.mark.parametrize("flip", [False, True])
def test_herding_and_class_means_share_one_feature_pass(tmp_path, monkeypatch, flip):
    """After a task, herding extracts the new classes' images and the class means reuse the
    new exemplars' features: only the old exemplars (under the new weights) and, when the
    augmentation flips, every exemplar's flip are extracted again."""
    from cilkit.engine.data import DeviceSplit
    from cilkit.learners.base import Learner

    extracted = {False: 0, True: 0}
    embed, after_task = DeviceSplit.embed, Learner.after_task
    expected: list[tuple[int, int]] = []
    seen: list[tuple[int, int]] = []

    def counting_embed(self, indices, fn, batch_size=512, flip=False, amp=None):
        extracted[flip] += len(indices)
        return embed(self, indices, fn, batch_size, flip, amp)

    def watched_after_task(self, ctx):
        extracted[False] = extracted[True] = 0
        new = sum(len(ctx.class_indices(c)) for c in ctx.info.new_classes)
        after_task(self, ctx)
        counts = self.memory.counts()
        old = sum(n for c, n in counts.items() if c < self.num_old_classes)
        flips = len(self.memory) if ctx.train.transform.preset.flip else 0
        expected.append((new + old, flips))
        seen.append((extracted[False], extracted[True]))

    monkeypatch.setattr(DeviceSplit, "embed", counting_embed)
    monkeypatch.setattr(Learner, "after_task", watched_after_task)
    preset = ["data.augment.flip=true"] if flip else ["data.augment.flip=false"]
    Trainer(tiny("icarl", "train.epochs=1", *preset), tmp_path, log=None).fit()
    assert seen == expected
    assert all(f > 0 for _, f in seen) == flip


def test_align_weights_equalises_mean_norms():
    head = ExpandableLinear(16)
    head.expand(6)
    head.expand(4)
    with torch.no_grad():
        head.weights[1].mul_(5)
    bias = head.bias.detach().clone()
    gamma = align_weights(head, 6)
    norms = head.weight.detach().norm(dim=1)
    assert torch.equal(head.bias, bias)  # biases are not aligned
    assert norms[:6].mean() == pytest.approx(float(norms[6:].mean()), rel=1e-5)
    assert gamma < 1


def test_wa_aligns_after_each_incremental_task(tmp_path):
    from cilkit.engine import trainer as trainer_mod

    cfg = tiny("wa", "train.epochs=4")
    t = trainer_mod.Trainer(cfg, tmp_path, log=None)
    t.fit()
    # Rebuild and inspect: after the last task the head's old and new mean norms are equal.
    s = t.setup()
    from cilkit.learners import TaskContext

    gen = torch.Generator().manual_seed(0)
    for task in range(2):
        info = s.train_scenario.task_info(task)
        ctx = TaskContext(info, s.train, gen)
        s.learner.before_task(ctx)
        s.learner.after_task(ctx)
    w = s.learner.network.head.weight.detach()
    norms = w.norm(dim=1)
    assert norms[:4].mean() == pytest.approx(float(norms[4:7].mean()), rel=1e-5)


@pytest.mark.parametrize("name", LEARNERS.names())
def test_frozen_parts_stay_in_eval_mode_and_keep_their_statistics(name, watched_run):
    """The teacher (and any other frozen part) normalises with its running statistics during
    training and never updates them: PyCIL, FACIL and Liu et al. keep it in eval mode."""
    run = watched_run(name)
    if LEARNERS.get(name).obj.keeps_old_network:
        assert run.teachers == 2  # one teacher for each of tasks 1 and 2
    for record in run.frozen:
        assert record["modes"] == {False}
        for key, first in record["first"].items():
            assert torch.equal(first, record["last"][key]), key


def test_finetune_trains_on_the_new_classes_logits_only_by_default():
    """PyCIL's finetune: cross-entropy over logits[:, old:] with labels shifted by old."""
    import torch.nn.functional as F

    from cilkit.backbones import create_network
    from cilkit.config.schema import MemoryConfig
    from cilkit.engine.data import Batch
    from cilkit.learners import create_learner

    cfg = tiny("finetune")
    assert cfg.learner.new_classes_only
    torch.manual_seed(0)
    net = create_network(cfg.backbone, 1)
    learner = create_learner(cfg.learner, net, MemoryConfig())
    net.expand(7)
    learner.num_old_classes, learner.num_seen_classes = 4, 7
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([4, 5, 6, 4, 5])
    out = learner.training_step(Batch(x, y, torch.arange(5)))
    logits = net(x)
    expected = F.cross_entropy(logits[:, 4:], y - 4)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()
    assert net.head.weight.grad[:4].abs().max() == 0  # old rows get no gradient
    every = create_learner(
        build_config({"learner": {"name": "finetune", "new_classes_only": False}}).learner,
        net,
        MemoryConfig(),
    )
    every.num_old_classes, every.num_seen_classes = 4, 7
    all_seen = every.training_step(Batch(x, y, torch.arange(5))).loss
    assert all_seen.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
