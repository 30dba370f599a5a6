"""``benchmarks/seeds.py`` (and ``zoo.py`` on top of it) runs sweeps that outlive a session: an
interrupted run must continue from its last finished task, and only when it is the same run."""

from __future__ import annotations

import json
from pathlib import Path

from bench_scripts import load

from cilkit.cli.main import main

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "seeds.py"
OVERRIDES = ["train.epochs=1", "scenario.initial_increment=5", "scenario.increment=5"]


def _first_checkpoint(run_dir: Path) -> Path:
    return sorted((run_dir / "checkpoints").glob("task-*.safetensors"))[0]


def test_an_interrupted_run_continues_and_a_changed_one_starts_over(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seeds = load("seeds")
    out = tmp_path / "sweep"
    run_dir = out / "v" / "seed-1"
    run_args = ["seed=1", "engine.num_threads=1", *OVERRIDES]  # what seeds.py passes
    run_dir.mkdir(parents=True)
    (run_dir / "seeds-command.json").write_text(json.dumps(run_args))
    assert main(["run", "--out", str(run_dir), "--quiet", "--stop-after-task", "0", *run_args]) == 0
    first = _first_checkpoint(run_dir)
    stamp = first.stat().st_mtime_ns
    first_record = (run_dir / "metrics.jsonl").read_text().splitlines()[0]

    assert seeds._run("v", None, OVERRIDES, 1, out, None)[2] is not None
    assert (run_dir / "summary.json").exists()
    assert first.stat().st_mtime_ns == stamp  # task 0 was not trained again
    records = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 2 and records[0] == first_record

    assert seeds._run("v", None, OVERRIDES, 1, out, None)[2] is None  # finished: kept

    (run_dir / "summary.json").unlink()
    changed = [*OVERRIDES, "optim.lr=0.05"]
    assert seeds._run("v", None, changed, 1, out, None)[2] is not None
    assert _first_checkpoint(run_dir).stat().st_mtime_ns != stamp  # started over
    assert "lr: 0.05" in (run_dir / "config.yaml").read_text()
    assert json.loads((run_dir / "seeds-command.json").read_text())[-1] == "optim.lr=0.05"
