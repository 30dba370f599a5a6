"""When and what the engine checkpoints, and how a run continues from a checkpoint.

The file format (safetensors + checksummed JSON, ``LATEST``, picking the newest valid one) is
:mod:`cilkit.engine.checkpoint`; this module decides the content: the learner's state, the
records so far, every process's generators and buffers, and, inside a task, the phase (main
training or a stage), its epoch, optimiser, schedule and a stage's own state.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from cilkit.config import ExperimentConfig, config_to_dict
from cilkit.engine.checkpoint import (
    find_resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from cilkit.engine.state import RunState
from cilkit.errors import CheckpointError

KEEP_TASK_CHECKPOINTS = 2
"""Task checkpoints kept (the newest ones); a mid-task checkpoint is kept until the next one."""


def config_fingerprint(cfg: ExperimentConfig) -> str:
    """Hash of everything in a config that changes results (not progress bars, workers, name)."""
    data = config_to_dict(cfg)
    data.pop("name", None)
    for section, key in (
        ("engine", "progress"),
        ("engine", "tensorboard"),
        ("train", "num_workers"),
    ):
        data[section].pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def checkpoint_dir(run: RunState) -> Path:
    return run.run.path / "checkpoints"


def write_checkpoint(
    run: RunState, name: str, next_task: int, partial: dict[str, Any] | None = None
) -> None:
    """Write everything needed to continue; keep the last two task checkpoints.

    Every process takes part: under torchrun each rank's generators and buffers (its
    BatchNorm statistics differ inside a task) are gathered, so a resumed run continues each
    rank exactly where it stopped. Rank 0 writes.
    """
    learner = run.learner
    own = {
        "rng": rng_state(run.generators),
        "buffers": {k: v.detach().cpu() for k, v in learner.named_buffers()},
    }
    gathered = run.dist.gather_object(own) if run.dist.world_size > 1 else [own]
    if not run.main_process:
        return
    state = {
        "config_hash": config_fingerprint(run.cfg),
        "next_task": next_task,
        "records": run.records,
        "learner": learner.state_dict(),
        "rng": own["rng"],
        "partial": partial,
        "world_size": run.dist.world_size,
        "other_ranks": gathered[1:],
    }
    folder = checkpoint_dir(run)
    save_checkpoint(folder, name, state)
    keep = {name}
    previous = sorted(p.stem for p in folder.glob("task-*.json"))
    keep.update(n for n in previous if "epoch" not in n and n <= name)
    keep = set(sorted(keep)[-KEEP_TASK_CHECKPOINTS:]) | {name}
    for p in folder.glob("task-*"):
        if p.stem not in keep:
            p.unlink(missing_ok=True)


def restore(run: RunState) -> tuple[int, dict[str, Any] | None]:
    """Load the newest valid checkpoint into the learner, the generators and ``run.records``;
    returns the next task and the mid-task state (if any)."""
    found = find_resume_checkpoint(checkpoint_dir(run))
    if found is None:
        run.say(
            "no checkpoint yet (the run stopped before its first task finished): "
            "starting from the beginning"
        )
        return 0, None
    path, state, notes = found
    for note in notes:
        run.warn(note)
    if state.get("config_hash") != config_fingerprint(run.cfg):
        raise CheckpointError(
            f"{path}: written by a different config than {run.run.config_path}; "
            "resume with the run's own config.yaml"
        )
    learner = run.learner
    try:
        learner.load_state_dict(state["learner"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: does not fit this learner ({first})") from None
    rank_state = {"rng": state["rng"]}
    others = state.get("other_ranks") or []
    dist = run.dist
    if state.get("world_size", 1) != dist.world_size:
        run.warn(
            f"{path.name} was written by {state.get('world_size', 1)} process(es), this run "
            f"has {dist.world_size}: it continues, but will not equal an uninterrupted run"
        )
    elif dist.rank > 0:
        rank_state = others[dist.rank - 1]
        with torch.no_grad():
            for key, buf in learner.named_buffers():
                stored = rank_state["buffers"].get(key)
                if stored is not None and stored.shape == buf.shape:
                    buf.copy_(stored)
    set_rng_state(rank_state["rng"], run.generators)
    run.records[:] = list(state["records"])
    partial = state.get("partial")
    if partial is not None:
        partial["load_from"] = path
    return int(state["next_task"]), partial
