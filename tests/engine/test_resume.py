"""Runs that survive: stop and resume, Ctrl-C, kill -9, bad checkpoints, NaN loss, disk full."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from fast_options import fast_overrides

from cilkit.config import build_config
from cilkit.engine.checkpoint import latest_checkpoint
from cilkit.engine.trainer import RunInterrupted, Trainer, TrainingError
from cilkit.errors import CheckpointError
from cilkit.learners import LEARNERS, Learner

TIMING_KEYS = {"train_seconds"}


def tiny(name: str = "icarl", *overrides: str):
    learner = LEARNERS.get(name).obj
    data = {
        "seed": 5,
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 4, "increment": 3},
        "backbone": {"name": "convnet4", "hidden": 16},
        "learner": {"name": name},
        "optim": {"lr": 0.05, "milestones": [1]},
        "train": {"epochs": 2, "batch_size": 128},
        "engine": {"progress": "none"},
    }
    if learner.needs_memory:
        data["memory"] = {"memory_size": 40}
    return build_config(data, [*fast_overrides(name), *overrides])


def results(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS}


def metrics(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in lines]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cache = {}

    def get(name: str, *overrides: str):
        key = (name, overrides)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"full-{name}")
            cache[key] = (results(Trainer(tiny(name, *overrides), out, log=None).fit()), out)
        return cache[key]

    return get


@pytest.mark.parametrize("name", LEARNERS.names())
def test_stop_and_resume_after_each_task_equals_uninterrupted(name, tmp_path, uninterrupted):
    expected, full_dir = uninterrupted(name)
    cfg = tiny(name)
    assert Trainer(cfg, tmp_path, log=None).fit(stop_after_task=0) is None
    assert not (tmp_path / "summary.json").exists()
    assert Trainer(cfg, tmp_path, log=None).fit(resume=True, stop_after_task=1) is None
    summary = Trainer(cfg, tmp_path, log=None).fit(resume=True)
    assert results(summary) == expected
    assert results(json.loads((tmp_path / "summary.json").read_text())) == expected
    assert metrics(tmp_path) == metrics(full_dir)


def _interrupt_at_step(monkeypatch, task: int, step: int) -> None:
    """Send ourselves SIGINT (Ctrl-C) at a given training step of a given task."""
    original = Learner.after_step
    calls = {"n": 0}

    def after_step(self):
        original(self)
        if self.num_seen_classes == (4 if task == 0 else 4 + 3 * task):
            calls["n"] += 1
            if calls["n"] == step:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Learner, "after_step", after_step)


def test_ctrl_c_mid_task_checkpoints_and_resumes_exactly(tmp_path, monkeypatch, uninterrupted):
    expected, _ = uninterrupted("icarl", "train.epochs=3")
    cfg = tiny("icarl", "train.epochs=3")
    _interrupt_at_step(monkeypatch, task=1, step=2)
    with pytest.raises(RunInterrupted, match="epoch 0.*cilkit run --resume"):
        Trainer(cfg, tmp_path, log=None).fit()
    monkeypatch.undo()
    assert "epoch" in latest_checkpoint(tmp_path / "checkpoints").name
    summary = Trainer(cfg, tmp_path, log=None).fit(resume=True)
    assert results(summary) == expected


def test_checkpoint_every_epochs_keeps_results_identical(tmp_path, uninterrupted):
    expected, _ = uninterrupted("icarl", "train.epochs=3")
    cfg = tiny("icarl", "train.epochs=3", "engine.checkpoint_every_epochs=1")
    assert results(Trainer(cfg, tmp_path, log=None).fit()) == expected
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [
        "LATEST",
        "task-001.json",
        "task-001.safetensors",
        "task-002.json",
        "task-002.safetensors",
    ]


def test_kill_9_mid_run_then_resume(tmp_path, uninterrupted):
    expected, _ = uninterrupted("icarl", "train.epochs=6")
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "cilkit",
        "run",
        "--quiet",
        "--out",
        str(out),
        "data.name=digits",
        "scenario.initial_increment=4",
        "scenario.increment=3",
        "backbone.name=convnet4",
        "backbone.hidden=16",
        "learner.name=icarl",
        "memory.memory_size=40",
        "optim.lr=0.05",
        "optim.milestones=[1]",
        "train.epochs=6",
        "train.batch_size=128",
        "seed=5",
        "engine.checkpoint_every_epochs=1",
        "optim.scheduler=multistep",
        "train.eval_batch_size=512",
        "optim.weight_decay=0.0002",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "LATEST"
    try:
        while proc.poll() is None:
            if latest.exists() and "task-001-train-epoch" in latest.read_text():
                break
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert latest.exists() and not (out / "summary.json").exists()  # killed mid-run
    # The run's own config.yaml differs from tiny() only in the name, which changes no result.
    summary = Trainer(_config_of(out), out, log=None).fit(resume=True)
    assert results(summary) == expected


def _config_of(run_dir):
    from cilkit.config import load_config

    return load_config(run_dir / "config.yaml")


def _stopped_run(tmp_path):
    cfg = tiny("replay")
    Trainer(cfg, tmp_path, log=None).fit(stop_after_task=0)
    return cfg, tmp_path / "checkpoints" / "task-000"


@pytest.mark.parametrize("damage", ["flip", "truncate", "json"])
def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    cfg, stem = _stopped_run(tmp_path)
    tensors = stem.with_suffix(".safetensors")
    if damage == "flip":
        data = bytearray(tensors.read_bytes())
        data[-10] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:100])
    else:
        stem.with_suffix(".json").write_text('{"format": 1, "state": ')
    with pytest.raises(CheckpointError) as err:
        Trainer(cfg, tmp_path, log=None).fit(resume=True)
    assert "task-000" in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_from_another_config_is_refused(tmp_path):
    _, _ = _stopped_run(tmp_path)
    other = tiny("replay", "learner.name=replay", "optim.lr=0.01")
    with pytest.raises(CheckpointError, match="different config"):
        Trainer(other, tmp_path, log=None).fit(resume=True)


def test_nan_loss_stops_naming_task_epoch_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    cfg = tiny("replay")
    original = Learner.training_step

    def training_step(self, batch):
        out = original(self, batch)
        if self.num_old_classes:  # task 1
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(Learner, "training_step", training_step)
    with pytest.raises(TrainingError, match=r"task 1, epoch 0, step 0: the loss is not finite"):
        Trainer(cfg, tmp_path, log=None).fit()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "task-000.json"
    assert len(metrics(tmp_path)) == 1
    monkeypatch.undo()
    summary = Trainer(cfg, tmp_path, log=None).fit(resume=True)
    assert summary["num_tasks"] == 3


@pytest.mark.parametrize("ending", ["finished", "stopped", "failed"])
def test_every_way_out_of_a_run_leaves_the_process_group(ending, tmp_path, monkeypatch):
    """A torchrun process that exits while still in its gloo group aborts ("terminate called
    without an active exception") and torchrun calls the run failed: ``fit`` closes the group
    whether the run finished, stopped after a task or raised."""
    from cilkit.engine.distributed import Distributed

    closed = []
    monkeypatch.setattr(Distributed, "close", lambda self: closed.append(True))
    if ending == "failed":

        def broken(self, *args, **kwargs):
            raise RuntimeError("broken evaluation")

        monkeypatch.setattr(Trainer, "_evaluate", broken)
    trainer = Trainer(tiny("finetune", "train.epochs=1"), tmp_path, log=None)
    if ending == "failed":
        with pytest.raises(RuntimeError, match="broken evaluation"):
            trainer.fit()
    else:
        trainer.fit(stop_after_task=0 if ending == "stopped" else None)
    assert closed == [True]


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = tiny("finetune")
    import cilkit.results.io as io

    real_fsync = io.os.fsync
    state = {"calls": 0}

    def fsync(fd):
        # fail while writing the second checkpoint's tensor file
        if state["armed"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    state["armed"] = False
    import cilkit.engine.trainer as trainer_mod

    original = trainer_mod.write_checkpoint

    def checkpoint(*args, **kwargs):
        state["calls"] += 1
        state["armed"] = state["calls"] == 2
        try:
            return original(*args, **kwargs)
        finally:
            state["armed"] = False

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(trainer_mod, "write_checkpoint", checkpoint)
    with pytest.raises(CheckpointError, match="No space left on device.*task-000.json is still"):
        Trainer(cfg, tmp_path, log=None).fit()
    monkeypatch.undo()
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
    assert latest_checkpoint(tmp_path / "checkpoints").name == "task-000.json"
    assert Trainer(cfg, tmp_path, log=None).fit(resume=True)["num_tasks"] == 3


def test_resume_of_a_run_that_never_finished_a_task_starts_over(tmp_path, uninterrupted):
    expected, _ = uninterrupted("replay")
    cfg = tiny("replay")
    (tmp_path / "config.yaml").write_text("")  # killed after the config, before a checkpoint
    log = io.StringIO()
    summary = Trainer(cfg, tmp_path, log=log).fit(resume=True)
    assert "starting from the beginning" in log.getvalue()
    assert "--overwrite" not in log.getvalue()
    assert results(summary) == expected


def test_config_is_written_before_the_data_loads(tmp_path, monkeypatch, uninterrupted):
    """A kill while the data loads (tens of seconds on big sets) leaves a resumable run."""
    import cilkit.engine.build as build_mod

    expected, _ = uninterrupted("replay")
    cfg = tiny("replay")

    def killed(_cfg):
        assert (tmp_path / "config.yaml").exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod, "create_dataset", killed)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path, log=None).fit()
    monkeypatch.undo()
    assert results(Trainer(_config_of(tmp_path), tmp_path, log=None).fit(resume=True)) == expected


def _edit_first_accuracy(json_path, value):
    header = json.loads(json_path.read_text())
    header["state"]["records"][0]["accuracy"] = value
    json_path.write_text(json.dumps(header, indent=2))


@pytest.mark.parametrize("damage", ["edit", "digit"])
def test_edited_checkpoint_json_is_refused_naming_the_file(tmp_path, damage):
    cfg, stem = _stopped_run(tmp_path)
    json_path = stem.with_suffix(".json")
    if damage == "edit":  # one recorded accuracy changed, still valid JSON
        _edit_first_accuracy(json_path, 12.34)
    else:  # one digit of the JSON changed to another
        text = json_path.read_text()
        at = text.index('"num_seen_classes": ') + len('"num_seen_classes": ')
        json_path.write_text(text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1 :])
    with pytest.raises(CheckpointError) as err:
        Trainer(cfg, tmp_path, log=None).fit(resume=True)
    message = str(err.value)
    assert "task-000.json" in message and "checksum mismatch" in message
    assert "\n" not in message


def _two_task_run(tmp_path):
    cfg = tiny("replay")
    Trainer(cfg, tmp_path, log=None).fit(stop_after_task=1)
    return cfg, tmp_path / "checkpoints"


@pytest.mark.parametrize(
    "damage", ["latest missing", "latest garbage", "newest edited", "newest truncated"]
)
def test_damaged_newest_checkpoint_or_latest_falls_back_to_newest_valid(
    tmp_path, damage, uninterrupted
):
    expected, _ = uninterrupted("replay")
    cfg, ckpt = _two_task_run(tmp_path)
    if damage == "latest missing":
        (ckpt / "LATEST").unlink()
    elif damage == "latest garbage":
        (ckpt / "LATEST").write_bytes(b"\x00\xff garbage")
    elif damage == "newest edited":
        _edit_first_accuracy(ckpt / "task-001.json", 91.88)
    else:
        blob = (ckpt / "task-001.safetensors").read_bytes()
        (ckpt / "task-001.safetensors").write_bytes(blob[: len(blob) // 2])
    log = io.StringIO()
    summary = Trainer(cfg, tmp_path, log=log).fit(resume=True)
    text = log.getvalue()
    used = "task-001.json" if damage.startswith("latest") else "task-000.json"
    assert f"resuming from {used}, the newest valid checkpoint" in text
    assert ("LATEST is" in text) == damage.startswith("latest")
    assert "--overwrite" not in text
    assert "warning:" in (tmp_path / "log.txt").read_text()
    assert results(summary) == expected


def test_newer_complete_checkpoint_than_latest_is_used(tmp_path, uninterrupted):
    """A crash between a checkpoint's files and LATEST: the newer checkpoint verifies."""
    expected, _ = uninterrupted("replay")
    cfg, ckpt = _two_task_run(tmp_path)
    (ckpt / "LATEST").write_text("task-000\n")
    log = io.StringIO()
    summary = Trainer(cfg, tmp_path, log=log).fit(resume=True)
    assert "LATEST names task-000, but task-001.json is newer" in log.getvalue()
    assert results(summary) == expected


def test_learner_state_dict_loads_into_fresh_learner(tmp_path):
    cfg = tiny("icarl")
    t = Trainer(cfg, tmp_path, log=None)
    t.fit()
    from cilkit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    fresh = t.setup().learner
    fresh.load_state_dict(state["learner"])
    assert fresh.network.num_classes == 10 and fresh.old_network is not None
    assert fresh.class_means.shape == (10, 16) and len(fresh.memory) == 40
    assert torch.equal(
        fresh.memory.indices(), state["learner"]["_extra_state"]["memory"]["indices"]
    )
