"""Run directories for the comparison tests: tiny real runs on digits (seconds each) and
hand-made directories in the states the engine leaves (failed, interrupted, killed, running,
empty)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from cilkit.config import build_config
from cilkit.engine.trainer import Trainer


def tiny_config(name: str, learner: str, *overrides: str, long_tail: bool = False):
    """A digits run in 3 tasks (4, 3, 3 classes) of 3 epochs on a small convnet4, or with
    ``long_tail`` one task of all 10 classes on an exponential profile (imbalance 20)."""
    data = {
        "name": name,
        "seed": 0,
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 4, "increment": 3},
        "backbone": {"name": "convnet4", "hidden": 16},
        "learner": {"name": learner},
        "optim": {"lr": 0.05, "scheduler": "constant", "weight_decay": 0.0},
        "train": {"epochs": 3, "batch_size": 64},
        "engine": {"progress": "none", "tensorboard": False},
    }
    if learner == "icarl":
        data["memory"] = {"memory_size": 60}
    if long_tail:
        data["scenario"] = {
            "initial_increment": 10,
            "increment": 10,
            "long_tail": {"kind": "exp", "imb_factor": 20, "max_per_class": 120},
            "many_threshold": 60,
            "few_threshold": 15,
        }
    return build_config(data, list(overrides))


def train(cfg, out: Path, **fit) -> Path:
    Trainer(cfg, out, log=None).fit(**fit)
    return out


def real_runs(base: Path) -> dict[str, Path]:
    """Three finished runs: iCaRL (CNN and NME), finetune, and a long-tailed finetune."""
    return {
        "icarl": train(tiny_config("cmp-icarl", "icarl"), base / "icarl"),
        "finetune": train(tiny_config("cmp-finetune", "finetune"), base / "finetune"),
        "lt": train(tiny_config("cmp-lt-finetune", "finetune", long_tail=True), base / "lt"),
    }


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def hand_made(source: Path, base: Path) -> dict[str, Path]:
    """Directories as the engine leaves them, built from the finished run ``source``:

    * ``failed``: config, ``status.json`` failed with its error, no task finished;
    * ``interrupted``: first task's record and checkpoint, status interrupted (Ctrl-C);
    * ``killed``: first task's record and checkpoint, status running with a gone process;
    * ``running``: status running in this (live) process;
    * ``empty``: only ``config.yaml`` (killed before anything else was written);
    * ``legacy``: a record and a checkpoint but no ``status.json`` (written before it existed).
    """
    config = (source / "config.yaml").read_text()
    first = (source / "metrics.jsonl").read_text().splitlines()[0] + "\n"
    dirs = {}
    for name in ("failed", "interrupted", "killed", "running", "empty", "legacy"):
        d = base / name
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(config.replace("name: ", f"name: {name}-", 1))
        dirs[name] = d
    for name in ("interrupted", "killed", "legacy", "running"):
        (dirs[name] / "metrics.jsonl").write_text(first)
        ckpt = dirs[name] / "checkpoints"
        ckpt.mkdir()
        for suffix in (".json", ".safetensors"):
            shutil.copy(source / "checkpoints" / f"task-001{suffix}", ckpt / f"task-000{suffix}")
        (ckpt / "LATEST").write_text("task-000\n")
    status = {
        "failed": {"state": "failed", "error": "TrainingError: loss is NaN at task 0, epoch 2"},
        "interrupted": {
            "state": "interrupted",
            "error": "interrupted; checkpoint written at task 0",
        },
        "killed": {"state": "running", "pid": dead_pid(), "host": socket.gethostname()},
        "running": {"state": "running", "pid": os.getpid(), "host": socket.gethostname()},
    }
    for name, data in status.items():
        (dirs[name] / "status.json").write_text(json.dumps(data))
    return dirs
