"""Run configs over several seeds and report each metric's mean and spread.

Every comparison the documentation draws a conclusion from is measured this way: one run per
(variant, seed), each a plain ``cilkit run`` into ``OUT/<variant>/seed-<S>/``, then the mean, the
sample standard deviation and every seed's value of the chosen summary metrics. Runs whose
``summary.json`` exists are not repeated, and a run that was stopped or killed part-way (a
session ended, Ctrl-C) continues with ``cilkit run --resume`` from its last finished task, when
it was started by the same command (``seeds-command.json`` in its folder says which); otherwise
it starts over.

    python benchmarks/seeds.py --out runs/seeds/lt \\
        --variant ce=configs/lt/fashion_mnist_lt100_ce.yaml \\
        --variant bsce=configs/lt/fashion_mnist_lt100_bsce.yaml \\
        --seeds 1993,1994,1995 --jobs 2 --metrics last_accuracy,few_accuracy

A variant is ``NAME=CONFIG[,override,override...]`` (``CONFIG`` may be ``-`` for the built-in
quickstart). ``--src DIR`` runs the cilkit source tree at DIR instead (e.g. a worktree of an older
commit, for a before/after comparison). Runs use ``engine.num_threads=1`` and ``--jobs`` of them
run side by side: on a shared 2-core machine this is faster and steadier than one run with two
threads (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_METRICS = "avg_incremental_accuracy,last_accuracy,nme_avg_incremental_accuracy"


def _parse_variant(text: str) -> tuple[str, str | None, list[str]]:
    name, _, rest = text.partition("=")
    config, *overrides = rest.split(",")
    if not name or not config:
        raise SystemExit(f"--variant {text!r}: expected NAME=CONFIG[,override,...]")
    return name, (None if config == "-" else config), [o for o in overrides if o]


def seed_args(config: str | None, seed: int, overrides: list[str]) -> list[str]:
    """The arguments of one seed's ``cilkit run``: one thread, the seed, the overrides."""
    args = ["-c", config] if config else []
    return [*args, f"seed={seed}", "engine.num_threads=1", *overrides]


def run_env(src: str | None = None) -> dict[str, str]:
    """The environment of those runs: one OpenMP thread, ``src`` first on the path if given."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    return env


CILKIT_RUN = [sys.executable, "-m", "cilkit", "run", "--quiet"]


def _run(
    name: str, config: str | None, overrides: list[str], seed: int, out: Path, src: str | None
) -> tuple[str, int, float | None]:
    run_dir = out / name / f"seed-{seed}"
    if (run_dir / "summary.json").exists():
        return name, seed, None
    cmd = list(CILKIT_RUN)
    run_args = seed_args(config, seed, overrides)
    stamp = run_dir / "seeds-command.json"
    if (run_dir / "config.yaml").exists() and _read_json(stamp) == run_args:
        cmd += ["--resume", str(run_dir)]  # the same run, interrupted: continue it
    else:
        cmd += ["--out", str(run_dir), "--overwrite", *run_args]
        run_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(run_args))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env(src))
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return name, seed, time.perf_counter() - start


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _value(summary: dict, key: str) -> float | None:
    if key in summary:
        return summary[key]
    for group in ("after", "ensemble"):  # cilkit tune summaries
        if key.startswith(group + ".") and group in summary:
            return summary[group].get(key.split(".", 1)[1])
    return None


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", action="append", required=True, metavar="NAME=CONFIG[,o,...]")
    p.add_argument("--seeds", default="1993,1994,1995")
    p.add_argument("--out", required=True, help="folder of the runs")
    p.add_argument("--metrics", default=DEFAULT_METRICS, help="summary.json keys, comma-separated")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side")
    p.add_argument("--src", help="run the cilkit source tree at this src/ folder instead")
    args = p.parse_args()
    variants = [_parse_variant(v) for v in args.variant]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    tasks = [(n, c, o, s) for n, c, o in variants for s in seeds]
    tasks.sort(key=lambda t: seeds.index(t[3]))  # every variant's first seed first
    print(f"{len(tasks)} runs, {args.jobs} at a time; load average {os.getloadavg()}", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(_run, n, c, o, s, out, args.src) for n, c, o, s in tasks]
        for f in futures:
            name, seed, seconds = f.result()
            took = "kept" if seconds is None else f"{seconds:.0f} s"
            print(f"  {name} seed {seed}: {took}", flush=True)
    metrics = args.metrics.split(",")
    print(f"\nmean ± sample std over seeds {args.seeds} (every seed's value below each row)")
    print("| variant | " + " | ".join(metrics) + " | train s |")
    print("|---" * (len(metrics) + 2) + "|")
    for name, _, _ in variants:
        summaries = [
            json.loads((out / name / f"seed-{s}" / "summary.json").read_text()) for s in seeds
        ]
        cells, each = [], []
        for key in metrics:
            values = [v for v in (_value(s, key) for s in summaries) if v is not None]
            cells.append(_fmt(values))
            each.append("/".join(f"{v:.2f}" for v in values) or "-")
        wall = [s.get("train_seconds", 0.0) for s in summaries]
        print(f"| {name} | " + " | ".join(cells) + f" | {statistics.median(wall):.0f} |")
        print("|   (seeds) | " + " | ".join(each) + " | |")


if __name__ == "__main__":
    main()
