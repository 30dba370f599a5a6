"""The learner contract's promises, checked for every registered learner (generated from the
registry, so a new method is checked the moment it registers), plus the engine's side of them."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fast_options import VARIANTS, fast_overrides, trained_tasks

from cilkit.config import build_config
from cilkit.contract import Batch
from cilkit.engine.data import DeviceSplit
from cilkit.engine.trainer import RunInterrupted, Trainer
from cilkit.errors import ConfigError
from cilkit.learners import LEARNERS, Learner
from cilkit.registry import Entry


def tiny(name: str, *overrides: str):
    learner = LEARNERS.get(name).obj
    data = {
        "seed": 3,
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 4, "increment": 3},
        "backbone": {"name": "convnet4", "hidden": 16},
        "learner": {"name": name},
        "optim": {"lr": 0.05, "milestones": [2]},
        "train": {"epochs": 3, "batch_size": 128},
        "engine": {"progress": "none"},
    }
    if learner.needs_memory:
        data["memory"] = {"memory_size": 40}
    return build_config(data, [*fast_overrides(name), *overrides])


def results(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "train_seconds"}


@dataclass
class FullRun:
    dir: Path
    summary: dict
    printed: str


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted run of ``tiny(name)`` per learner, shared by the tests that only read
    its record (the suite trains each learner once for them, not once per test)."""
    runs: dict[str, FullRun] = {}

    def get(name: str) -> FullRun:
        if name not in runs:
            run_dir = tmp_path_factory.mktemp(f"full-{name}")
            printed = io.StringIO()
            summary = Trainer(tiny(name), run_dir, log=printed).fit()
            runs[name] = FullRun(run_dir, summary, printed.getvalue())
        return runs[name]

    return get


def _interrupt_in_epoch(monkeypatch, epoch: int, batch: int = 2) -> None:
    """Ctrl-C at a batch of the ``epoch``-th training epoch of the run (1-based, counting the
    main training's and the stages' epochs in the order they run)."""
    original = DeviceSplit.train_batches
    calls = {"n": 0}

    def train_batches(self, *args, **kwargs):
        calls["n"] += 1
        for i, b in enumerate(original(self, *args, **kwargs)):
            if calls["n"] == epoch and i == batch - 1:
                os.kill(os.getpid(), signal.SIGINT)
            yield b

    monkeypatch.setattr(DeviceSplit, "train_batches", train_batches)


def _interrupt_in_main_training(monkeypatch, cls: type, task: int, epoch: int) -> None:
    """Ctrl-C at the first batch of training epoch ``epoch`` (0-based) of task ``task``, whatever
    stages run before it: the learner's ``before_epoch`` marks its training epochs (the engine
    calls it in main training; GDumb, which trains in a stage, calls it there)."""
    original_epoch, original_batches = cls.before_epoch, DeviceSplit.train_batches
    armed = {"now": False, "done": False}
    tasks: list[int] = []  # the classes seen by each task so far

    def before_epoch(self, e, epochs):
        if not tasks or tasks[-1] != self.num_seen_classes:
            tasks.append(self.num_seen_classes)
        armed["now"] = e == epoch and len(tasks) == task + 1
        return original_epoch(self, e, epochs)

    def train_batches(self, *args, **kwargs):
        for b in original_batches(self, *args, **kwargs):
            if armed["now"] and not armed["done"]:
                armed["done"] = True
                os.kill(os.getpid(), signal.SIGINT)
            yield b

    monkeypatch.setattr(cls, "before_epoch", before_epoch)
    monkeypatch.setattr(DeviceSplit, "train_batches", train_batches)


@pytest.mark.parametrize("name", LEARNERS.names())
def test_ctrl_c_inside_a_task_resumes_to_the_uninterrupted_result(
    name, tmp_path, monkeypatch, full_run
):
    """Freezing, parameter groups and random choices made at a task's start survive a mid-task
    resume: the engine calls ``configure_training`` (and draws the task's generator) again."""
    tasks = trained_tasks(name)
    if not tasks:
        pytest.skip(f"{name} trains in no task: there is no training to interrupt")
    task = 1 if 1 in tasks else tasks[-1]
    run = full_run(name)
    _assert_resumes(name, tiny(name), task, run.summary, run.dir, tmp_path, monkeypatch)


def _assert_resumes(name, cfg, task: int, expected: dict, full: Path, tmp_path, monkeypatch):
    """Ctrl-C in training epoch 1 of ``task``, then ``--resume``: the uninterrupted summary and
    the uninterrupted run's final learner state, tensor for tensor (metrics alone can agree
    while a state the resumed run lost, such as which task's prompt it trains, differs)."""
    from cilkit.engine.checkpoint import latest_checkpoint, load_checkpoint

    _interrupt_in_main_training(monkeypatch, LEARNERS.get(name).obj, task=task, epoch=1)
    with pytest.raises(RunInterrupted, match=f"task {task}, epoch 1"):
        Trainer(cfg, tmp_path / "cut", log=None).fit()
    monkeypatch.undo()
    summary = Trainer(cfg, tmp_path / "cut", log=None).fit(resume=True)
    assert results(summary) == results(expected)
    final = {
        which: load_checkpoint(latest_checkpoint(d / "checkpoints"))["learner"]
        for which, d in (("full", full), ("resumed", tmp_path / "cut"))
    }
    assert list(final["full"]) == list(final["resumed"])
    differ = [k for k, v in final["full"].items() if not _same_value(v, final["resumed"][k])]
    assert not differ, f"after resuming, these differ from the uninterrupted run: {differ}"


def _same_value(a, b) -> bool:
    """``a`` and ``b`` equal, tensors bit for bit, inside dicts and sequences too (a memory's
    state is a dict of tensors)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and list(a) == list(b) and all(_same_value(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_value, a, b))
    return a == b


@pytest.mark.parametrize(("name", "overrides", "tasks"), VARIANTS)
def test_ctrl_c_inside_a_task_of_a_variant_resumes_to_the_uninterrupted_result(
    name, overrides, tasks, tmp_path, monkeypatch
):
    """The same promise for the learner configurations that train where the default does not
    (:data:`fast_options.VARIANTS`)."""
    cfg = tiny(name, *overrides)
    expected = Trainer(cfg, tmp_path / "full", log=None).fit()
    _assert_resumes(name, cfg, tasks[-1], expected, tmp_path / "full", tmp_path, monkeypatch)


@pytest.mark.parametrize(
    ("name", "overrides", "epoch"),
    [
        ("bic", [], 7),  # task 1: 3 main epochs (4-6), then the bias stage's first epoch
        ("icarl", ["learner.rebalance={method: lws, epochs: 3}"], 11),  # task 1: LWS stage
        ("lucir", ["learner.class_balanced_finetuning=true", "learner.cbf_epochs=3"], 8),
    ],
)
def test_ctrl_c_inside_a_stage_resumes_to_the_uninterrupted_result(
    name, overrides, epoch, tmp_path, monkeypatch
):
    cfg = tiny(name, *overrides)
    expected = results(Trainer(cfg, tmp_path / "full", log=None).fit())
    _interrupt_in_epoch(monkeypatch, epoch=epoch, batch=1)
    with pytest.raises(RunInterrupted):
        Trainer(cfg, tmp_path / "cut", log=None).fit()
    monkeypatch.undo()
    latest = (tmp_path / "cut" / "checkpoints" / "LATEST").read_text()
    assert "task-001-after_" in latest  # inside a stage, not the main training
    summary = Trainer(cfg, tmp_path / "cut", log=None).fit(resume=True)
    assert results(summary) == expected


@pytest.mark.parametrize("name", LEARNERS.names())
def test_every_predict_key_reaches_the_table_summary_and_plots(name, full_run):
    run = full_run(name)
    summary, run_dir = run.summary, run.dir
    parts = Trainer(tiny(name), run_dir, log=None).setup()
    learner = parts.learner
    from cilkit.engine.checkpoint import latest_checkpoint, load_checkpoint

    learner.load_state_dict(load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["learner"])
    learner.eval()
    x = next(parts.test.eval_batches(torch.arange(2), 2)).x
    keys = list(learner.predict(x))
    assert summary["classifiers"] == keys and keys[0] == "cnn"
    header = next(line for line in run.printed.splitlines() if line.startswith("task classes"))
    for key in keys:
        prefix = "" if key == "cnn" else f"{key}_"
        assert summary[f"{prefix}avg_incremental_accuracy"] is not None
        assert key.upper() in header or key == "cnn"
        assert f"{key.upper()}: average incremental accuracy" in run.printed
        plot = "accuracy_matrix.png" if key == "cnn" else f"accuracy_matrix_{key}.png"
        assert (run_dir / "plots" / plot).exists()
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["classifiers"] == keys


@pytest.mark.parametrize("name", LEARNERS.names())
def test_a_query_extractor_is_frozen_and_predict_equals_predict_queried(name, full_run):
    """A learner that takes its query from the engine's test-feature cache (L2P's frozen query
    ViT) predicts the same from the images alone, and its query model cannot train (or the
    cache would serve stale queries)."""
    from cilkit.engine.checkpoint import latest_checkpoint, load_checkpoint

    run_dir = full_run(name).dir
    parts = Trainer(tiny(name), run_dir, log=None).setup()
    learner = parts.learner
    learner.load_state_dict(load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["learner"])
    query = learner.query_extractor()
    if query is None:
        pytest.skip(f"{name} declares no query extractor")
    learner.train()  # the engine evaluates in eval mode; the query model must be so anyway
    assert not query.training and not any(p.requires_grad for p in query.parameters())
    learner.eval()
    x = next(parts.test.eval_batches(torch.arange(5), 5)).x
    with torch.no_grad():
        direct, queried = learner.predict(x), learner.predict_queried(x, query(x))
    assert list(direct) == list(queried)
    for key in direct:
        assert torch.equal(direct[key], queried[key]), key


@pytest.mark.parametrize("name", LEARNERS.names())
def test_named_loss_terms_reach_the_log(name, full_run):
    tasks = trained_tasks(name)
    if not tasks:
        pytest.skip(f"{name} trains in no task: no loss is logged")
    t = tasks[-1] + 1  # the last task that trains (1-based, as the log counts)
    log = (full_run(name).dir / "log.txt").read_text().splitlines()
    prefixes = (f"task {t}/3 epoch", f"task {t}: ")
    lines = [x for x in log if x.startswith(prefixes) and " epoch " in x]
    assert lines and all("loss" in x and "train accuracy" in x for x in lines)


def test_a_learner_declares_its_head():
    cfg = build_config({"learner": {"name": "lucir"}, "memory": {"memory_size": 40}})
    assert cfg.backbone.head is None  # the learner's head is taken
    from cilkit.config.validate import validate_experiment

    validate_experiment(cfg, 10)
    other = build_config(
        {
            "learner": {"name": "lucir"},
            "backbone": {"head": "linear"},
            "memory": {"memory_size": 40},
        }
    )
    with pytest.raises(ConfigError, match="backbone.head: learner 'lucir' needs the cosine head"):
        validate_experiment(other, 10)


def test_lucir_gets_the_cosine_head_from_the_registry(tmp_path):
    parts = Trainer(tiny("lucir"), tmp_path, log=None).setup()
    from cilkit.backbones import CosineLinear

    assert isinstance(parts.learner.network.head, CosineLinear)


def test_the_batch_path_hands_raw_images_views_and_a_transform(tmp_path, monkeypatch):
    """A learner can ask for the un-augmented uint8 batch, k augmented views and a device-side
    transform drawing from the engine's generator."""
    seen = []

    class Views(Learner):
        needs_raw_batch = True
        num_views = 3

        def transform_batch(self, batch, generator):
            noise = torch.rand(batch.x.shape, generator=generator, device=batch.x.device)
            return Batch(batch.x + 0 * noise, batch.y, batch.index, batch.raw, batch.views)

        def training_step(self, batch):
            seen.append((batch.raw.dtype, batch.raw.shape, len(batch.views), batch.x.shape))
            return super().training_step(batch)

    monkeypatch.setitem(LEARNERS._entries, "views", Entry("views", Views, Learner.config_cls, ""))
    cfg = build_config(
        {
            "data": {"name": "digits"},
            "scenario": {"increment": 5},
            "backbone": {"name": "convnet4", "hidden": 8},
            "learner": {"name": "views"},
            "train": {"epochs": 1},
            "engine": {"progress": "none"},
        }
    )
    Trainer(cfg, tmp_path, log=None).fit()
    dtype, raw_shape, views, x_shape = seen[0]
    assert dtype == torch.uint8 and raw_shape == x_shape and views == 2


def test_contract_types_and_registries_import_on_their_own():
    code = (
        "import sys\n"
        "import cilkit.contract\n"
        "assert not any(m.startswith(('cilkit.engine', 'cilkit.learners')) for m in sys.modules)\n"
        "from cilkit.data.base import DATASETS\n"
        "assert 'digits' in DATASETS and 'cifar100' in DATASETS\n"
        "from cilkit.registry import REGISTRIES, get_registry\n"
        "for kind in REGISTRIES:\n"
        "    assert get_registry(kind).names(), kind\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("name", LEARNERS.names())
def test_a_checkpoint_loads_onto_the_learners_device(name, full_run):
    """Checkpoint tensors are read on the CPU; whatever a fresh learner grows while loading
    them (heads, branches, per-task parameters) must land on the learner's device, or a run
    resumed on a GPU fails at its first step. The meta device stands in for a GPU here."""
    from cilkit.engine.checkpoint import latest_checkpoint, load_checkpoint

    run_dir = full_run(name).dir
    state = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["learner"]
    learner = Trainer(tiny(name), run_dir, log=None).setup().learner.to("meta")
    learner.load_state_dict(state)
    elsewhere = [
        key
        for key, value in [*learner.named_parameters(), *learner.named_buffers()]
        if value.device.type != "meta"
    ]
    assert not elsewhere, f"left on another device: {elsewhere}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a lent GPU machine)")
@pytest.mark.parametrize("name", LEARNERS.names())
def test_every_learner_stops_resumes_and_finishes_on_cuda(name, tmp_path):
    """What the CPU suite cannot see: random draws from the engine's augmentation generator,
    which lives on the training device (DER++'s replay and reservoir, MiSLAS's mixup), and a
    checkpoint read from the CPU into a learner on the GPU. Run where a GPU is lent:
    ``pytest tests/learners/test_contract.py -k cuda``."""
    cfg = tiny(name, "engine.device=cuda")
    assert Trainer(cfg, tmp_path, log=None).fit(stop_after_task=0) is None
    summary = Trainer(cfg, tmp_path, log=None).fit(resume=True)
    assert summary["classifiers"][0] == "cnn" and summary["avg_incremental_accuracy"] > 0
