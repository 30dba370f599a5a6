"""torchrun: 2 gloo processes on the CPU match a single process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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


def _run(out, learner: str, processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    if processes == 1:
        cmd = [sys.executable, "-m", "cilkit", "run"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "cilkit",
            "run",
        ]
    cmd += ["--out", str(out), f"learner.name={learner}", *ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
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
