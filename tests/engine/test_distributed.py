"""torchrun: 2 gloo processes on the CPU match a single process with the same global batch, and a
stopped or killed 2-process run resumes to exactly the uninterrupted 2-process result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from fast_options import fast_overrides

ARGS = [
    "--quiet",
    "data.name=digits",
    "scenario.initial_increment=5",
    "scenario.increment=5",
    "backbone.name=convnet4",
    "backbone.hidden=32",
    "memory.memory_size=100",
    "optim.lr=0.02",
    "optim.scheduler=cosine",
    "train.epochs=15",
    "train.batch_size=64",
    "seed=5",
    "engine.num_threads=1",
]


def _command(processes: int) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    if processes == 1:
        return [sys.executable, "-m", "cilkit", "run"], env
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*torchrun, f"--nproc_per_node={processes}", "-m", "cilkit", "run"], env


def _run(out, learner: str, processes: int, *extra: str) -> subprocess.CompletedProcess:
    cmd, env = _command(processes)
    cmd += ["--out", str(out), f"learner.name={learner}", *ARGS, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _resume(out, processes: int) -> subprocess.CompletedProcess:
    cmd, env = _command(processes)
    proc = subprocess.run(
        [*cmd, "--resume", str(out), "--quiet"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("learner", ["icarl", "wa"])
def test_two_gloo_processes_match_one(tmp_path, learner):
    ddp = _run(tmp_path / "ddp", learner, 2)
    single = _run(tmp_path / "single", learner, 1)
    a = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    b = json.loads((tmp_path / "single" / "summary.json").read_text())
    for key, tol in (("accuracy_matrix", 6.0), ("nme_accuracy_matrix", 4.0)):
        for row_a, row_b in zip(a[key], b[key], strict=True):
            for x, y in zip(row_a, row_b, strict=True):
                assert (x is None) == (y is None)
                if x is not None:
                    assert abs(x - y) <= tol, (key, a[key], b[key])
    # written once, by rank 0: one line per task, one summary line printed
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert ddp.stdout.count("run directory:") == 2  # header + final line, rank 0 only
    assert ddp.stdout.count("average incremental accuracy") == single.stdout.count(
        "average incremental accuracy"
    )
    assert "2 processes" in ddp.stdout
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir())[0] == "LATEST"


def _results(run_dir) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k != "train_seconds"}


def test_resumed_two_process_run_equals_the_uninterrupted_one(tmp_path):
    """Every rank's generators and BatchNorm statistics are saved, so a 2-process run stopped
    after a task, or killed inside one, continues exactly as if it had not stopped."""
    every = "engine.checkpoint_every_epochs=1"  # the same config (and results) in all three runs
    _run(tmp_path / "full", "wa", 2, every)
    expected = _results(tmp_path / "full")

    _run(tmp_path / "stopped", "wa", 2, every, "--stop-after-task", "0")
    assert not (tmp_path / "stopped" / "summary.json").exists()
    _resume(tmp_path / "stopped", 2)
    assert _results(tmp_path / "stopped") == expected

    killed = tmp_path / "killed"
    cmd, env = _command(2)
    cmd += ["--out", str(killed), "learner.name=wa", *ARGS, every]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    latest = killed / "checkpoints" / "LATEST"
    try:
        while proc.poll() is None:  # inside task 1, after a few of its epochs
            if latest.exists() and "task-001-train-epoch-0004" in latest.read_text():
                break
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (killed / "summary.json").exists()
    _resume(killed, 2)
    assert _results(killed) == expected


def _learner_args(name: str) -> list[str]:
    from cilkit.learners import LEARNERS

    args = [f"learner={{name: {name}}}", "train.epochs=3"]
    if not LEARNERS.get(name).obj.uses_memory:
        args.append("memory.memory_size=null")
    return args + fast_overrides(name)


COVERED = {
    "icarl": "test_two_gloo_processes_match_one",  # a teacher: the two match tests run it
    "finetune": "icarl",  # main training only, or with a teacher: icarl's path
    "replay": "icarl",
    "joint": "icarl",
    "wa": "icarl",
    "lwf": "icarl",
    "il2m": "icarl",
    "lucir": "icarl",
    "ewc": "icarl",  # a penalty from state computed after the task on every process alike
    "eeil": "foster",  # a stage with its own saved model
    "mislas": "foster",  # a stage whose saved state holds modules synchronised after it
    "gdumb": "bic",  # a stage on its own indices
    "podnet": "bic",
    "ride": "bic",  # a stage training only some parameters (the router)
    "memo": "der",  # a branched network
    "dualprompt": "l2p",  # a frozen ViT prompted through the token seam: PromptLearner's path
    "coda_prompt": "l2p",
    "fecam": "simplecil",  # a frozen network's features and a closed-form classifier after it
    "ranpac": "simplecil",
    "dsal": "acil",  # backpropagation on the first task only, then recursive least squares
    "aper": "ease",  # a PEFT module in the ViT trained through its hooks
}
"""Learners whose distributed path another test of the default run already takes: two
torchrun launches per learner cost about 35 s on two cores, and the default suite must stay
near ten minutes, so these run with ``-m slow``. A learner not named here (every new one) runs
by default; so do the learners with their own path: der, bic, derpp (a buffer filled during
training), foster, paco (an EMA encoder and a queue), proto_ltcil (mixing in
``transform_batch`` and a stage)."""


def _learner_names() -> list:
    from cilkit.learners import LEARNERS

    return [
        pytest.param(n, marks=pytest.mark.slow) if n in COVERED else n for n in LEARNERS.names()
    ]


@pytest.mark.parametrize("name", _learner_names())
def test_every_learner_trains_and_resumes_under_torchrun(tmp_path, name):
    """Main training and every stage take the one gradient-averaging path; a 2-process run
    resumed from its checkpoint after the first task gives the uninterrupted 2-process result.

    The resumed run is a copy of the finished one cut back to that checkpoint, which is the one
    ``--stop-after-task 0`` would have left (stopping itself under torchrun, and a kill -9, are
    tested above with WA): two torchrun launches per learner instead of three."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    _run(full, "icarl", 2, *_learner_args(name))
    shutil.copytree(full, cut)
    for path in [*(cut / "checkpoints").glob("task-001.*"), cut / "summary.json"]:
        path.unlink()
    (cut / "checkpoints" / "LATEST").write_text("task-000\n")
    _resume(cut, 2)
    assert "resuming at task 1" in (cut / "log.txt").read_text()  # not a fresh start
    assert _results(cut) == _results(full)
