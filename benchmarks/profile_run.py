"""Where the time of a whole ``cilkit run`` goes: training, teacher, evaluation, herding, ...

Runs one experiment in this process with a wall-clock timer wrapped around each of the
engine's and the learner's parts and prints each part's seconds and share of the whole run,
and its CPU seconds (the process's, every thread's): on a shared machine the wall time grows
with other jobs' load, the CPU time much less, so the CPU shares are the ones to compare.
The teacher's forward is inside training (indented); the top-level parts do not nest, and
"other" is the run minus them.

    python benchmarks/profile_run.py -c configs/experiments/icarl_tinyimagenet100_b0_inc10.yaml \\
        data.root=/path/to/tiny-imagenet-100a scenario.initial_increment=20 \\
        scenario.increment=20 train.epochs=1 train.init_epochs=1 [--out DIR] [--json OUT]

A part that a learner overrides (its own ``update_memory``) is timed only if it calls the base
version. Timing a part waits for nothing on the GPU: on CUDA the shares are those of the host.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

# (label, "module:qualified name", top level?)
PARTS = (
    ("building the run (data, network)", "cilkit.engine.build:build_run", True),
    ("training (main and stages)", "cilkit.engine.loop:run_loop", True),
    # frozen modules' forward inside training: a teacher, DER's and MEMO's old extractors
    ("  frozen modules' forward", "cilkit.backbones.network:Frozen.forward", False),
    ("evaluation", "cilkit.engine.trainer:Trainer._evaluate", True),
    ("exemplar selection", "cilkit.learners.base:Learner.update_memory", True),
    ("class means", "cilkit.learners.base:Learner.update_class_means", True),
    ("checkpoints", "cilkit.engine.checkpointing:write_checkpoint", True),
    ("plots", "cilkit.engine.report:write_plots", True),
)


def _timed(fn, totals, cpu, label: str, running: dict[str, int], parent: str | None):
    """``fn`` timed into ``totals``/``cpu`` under ``label``; a part listed under another
    (``parent``) is counted only while that one runs: DER's frozen extractors also run in
    evaluation and herding, which are not the training's teacher time."""
    depth = [0]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if parent is not None and not running[parent]:
            return fn(*args, **kwargs)
        depth[0] += 1
        running[label] += 1
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            depth[0] -= 1
            running[label] -= 1
            if depth[0] == 0:  # a recursive call is counted once
                totals[label] += time.perf_counter() - started
                cpu[label] += time.process_time() - cpu_started

    return wrapper


def _instrument(totals: dict[str, float], cpu: dict[str, float]) -> None:
    """Wrap every part where it is defined and wherever a cilkit module imported it by name."""
    running = {label: 0 for label, _, _ in PARTS}
    parent = None
    for label, target, top in PARTS:
        if top:
            parent = label
        module_name, _, name = target.partition(":")
        owner = importlib.import_module(module_name)
        *path, attr = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, attr)
        wrapped = _timed(original, totals, cpu, label, running, None if top else parent)
        setattr(owner, attr, wrapped)
        if path:  # a method: callers reach it through its class
            continue
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("cilkit"):
                for key, value in list(vars(module).items()):
                    if value is original:
                        setattr(module, key, wrapped)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", required=True)
    p.add_argument("overrides", nargs="*", help="KEY=VALUE, as for cilkit run")
    p.add_argument("--out", help="run directory (default: a temporary one)")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)

    from cilkit.config import load_config
    from cilkit.engine.trainer import Trainer

    cfg = load_config(args.config, ["engine.progress=none", *args.overrides])
    out = Path(args.out or tempfile.mkdtemp(prefix="cilkit-profile-"))
    import cilkit.engine.trainer  # noqa: F401  (every module that imports a part, loaded first)

    totals = {label: 0.0 for label, _, _ in PARTS}
    cpu = dict(totals)
    _instrument(totals, cpu)
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = Trainer(cfg, out, log=None).fit()
    wall, cpu_all = time.perf_counter() - started, time.process_time() - cpu_started
    rows = [(label, totals[label], cpu[label], top) for label, _, top in PARTS]
    other = wall - sum(t for _, t, _, top in rows if top)
    cpu_other = cpu_all - sum(c for _, _, c, top in rows if top)
    print(f"{cfg.name}: {cfg.learner.name}, run directory {out}")
    print(f"{'part':36s} {'seconds':>9s} {'share':>7s} {'CPU s':>9s} {'share':>7s}")
    for label, t, c, _ in [
        *rows,
        ("other", other, cpu_other, True),
        ("whole run", wall, cpu_all, True),
    ]:
        print(f"{label:36s} {t:9.1f} {100 * t / wall:6.1f}% {c:9.1f} {100 * c / cpu_all:6.1f}%")
    acc = summary.get("avg_incremental_accuracy")
    nme = summary.get("nme_avg_incremental_accuracy")
    print(
        f"average incremental accuracy CNN {acc}, NME {nme}; last CNN {summary.get('last_accuracy')}"
    )
    print(f"torch threads {_threads()}")
    if args.json:
        data = {label.strip(): {"wall": t, "cpu": c} for label, t, c, _ in rows}
        data |= {
            "other": {"wall": other, "cpu": cpu_other},
            "whole run": {"wall": wall, "cpu": cpu_all},
        }
        data["summary"] = {
            k: summary.get(k)
            for k in ("avg_incremental_accuracy", "last_accuracy", "nme_avg_incremental_accuracy")
        }
        Path(args.json).write_text(json.dumps(data, indent=2))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
