"""``benchmarks/gpu.py`` is run only on lent GPU machines, where a broken script would waste the
machine's few minutes: its ``--smoke`` mode runs every part on the CPU, tiny, here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import load

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def test_the_gpu_benchmark_runs_every_part_and_writes_its_table(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path), "--fraction", "0.5"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    parts = result["parts"]
    assert set(parts) == {
        "training step",
        "icarl protocol",
        "der epoch at ten tasks",
        "bf16 vs fp32 on cifar10",
        "runs sharing the device",
    }
    icarl = parts["icarl protocol"]
    assert icarl["extrapolated"] and icarl["fraction"] == 0.5
    assert icarl["full_protocol_s"] == pytest.approx(
        icarl["train_s"] / 0.5 + icarl["wall_s"] - icarl["train_s"]
    )
    assert parts["der epoch at ten tasks"]["tasks"] == 4  # 10 + 3 x 30 classes in smoke mode
    for amp in ("bf16", "off"):
        summary = parts["bf16 vs fp32 on cifar10"][amp]["summary"]
        assert summary["num_tasks"] == 2 and summary["dataset"] == "cifar10"
    shared = parts["runs sharing the device"]
    assert [r["seed"] for r in shared["together"]] == [1993, 1994]
    assert shared["throughput_vs_sequential"] == pytest.approx(
        2 * shared["alone"]["wall_s"] / max(r["wall_s"] for r in shared["together"])
    )
    # a subprocess run of seed 1993 reaches what the in-process amp=off run of part 4 reached
    in_process = parts["bf16 vs fp32 on cifar10"]["off"]["summary"]["avg_incremental_accuracy"]
    assert shared["alone"]["avg_incremental_accuracy"] == pytest.approx(in_process)
    assert "whole benchmark s" in proc.stdout
    assert "extrapolated from a fraction 0.5" in proc.stdout


def test_a_failed_part_is_one_row_of_the_table_and_the_others_still_show():
    gpu = load("gpu")
    result = {
        "parts": {
            "training step": {"error": "ModuleNotFoundError: No module named 'torchvision'"},
            "der epoch at ten tasks": {"tasks": 10, "last_task_epoch_s": 1.5},
        },
        "total_s": 12.0,
    }
    rows = dict(gpu.table_rows(result))
    assert rows["training step"] == "failed: ModuleNotFoundError: No module named 'torchvision'"
    assert rows["icarl protocol"] == "failed: not run"
    assert rows["DER, one epoch of task 10 s"] == "1.50"
