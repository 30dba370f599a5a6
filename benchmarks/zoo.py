"""Every registered learner on one protocol: the comparison table of docs/REPRODUCIBILITY.md.

Runs ``benchmarks/seeds.py`` with one variant per learner in the registry (a method registered
tomorrow is in tomorrow's table) on ``configs/cifar10_cil_cpu.yaml`` by default, each adapted
only where the method requires it:

- a learner that keeps no exemplars (finetune, LwF, EWC, joint) runs without a memory;
- a learner that needs its own memory selection (DER++'s reservoir, GDumb's class-balanced
  memory) gets it;
- a learner's extra training stages (EEIL's balanced finetuning, FOSTER's compression,
  PODNet's classifier finetuning, ...) get the protocol's epochs per task, so every method
  trains for the same number of epochs per stage; BiC's bias correction keeps its own
  schedule (see ``STAGE_EPOCHS``); GDumb, which trains on the memory alone, gets as many
  steps as the others' main training (``GDUMB_STEPS_FACTOR``);
- LUCIR's learned scale starts at 10 instead of 1 (see ``SHORT_SCHEDULE``);
- MEMO keeps training its generalised blocks, as its authors' experiments do
  (see ``AUTHORS_SETTINGS``).

    python benchmarks/zoo.py --data-root /path/with/cifar-10-batches-py --out runs/zoo \\
        [--learners icarl,der] [--seeds 1993] [--jobs 2] [--extra engine.device=cuda]

Everything after the options is the same as seeds.py: runs whose summary.json exists are kept,
so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

STAGE_EPOCHS = {
    "eeil": "learner.finetune_epochs",
    "foster": "learner.compression_epochs",
    "mislas": "learner.stage2_epochs",
    "podnet": "learner.finetune_epochs",
    "proto_ltcil": "learner.bias_epochs",
    "ride": "learner.router_epochs",
}
"""The option holding a learner's own stage epochs (set to the protocol's epochs per task).
BiC is not in it: its bias correction trains two numbers on a tenth of the memory and needs its
own schedule (with 3 epochs at lr 0.1 its alpha went negative on CIFAR-10; docs/REPRODUCIBILITY.md,
"The zoo on real data"); it costs about one main-training epoch a task (measured there)."""

GDUMB_STEPS_FACTOR = 5
"""GDumb trains only on the memory: its epochs are the protocol's times the default protocol's
images per task over memory slots (10,000 / 2,000), so it takes as many steps per task as the
others' main training. With the protocol's 3 epochs (47 steps from scratch) it underfit:
35.64 average incremental accuracy against 51.92 with 15 (docs/REPRODUCIBILITY.md)."""

AUTHORS_SETTINGS = {"memo": ["learner.train_base=true"]}
"""Where a learner's default follows its paper and the authors' own experiments run otherwise,
the zoo runs it as the authors do (as ``configs/experiments/`` does). MEMO's paper freezes the
generalised blocks after the first task; the authors' CIFAR-100 config keeps training them.
Frozen after a 2-class first task they cannot serve later classes: on the quickstart's digits
protocol MEMO scored 90.74 / 75.93 (avg / last, 3 seeds) frozen and 97.73 / 93.78 with
``train_base``, DER 97.92 / 94.37 (docs/REPRODUCIBILITY.md)."""

SHORT_SCHEDULE = {"lucir": ["backbone.cosine_scale=10"]}
"""Adaptations to a few epochs per task, each measured: LUCIR's learned scale, started at the
authors' 1, crossed zero in task 2 and inverted the classifier (docs/REPRODUCIBILITY.md)."""

METRICS = (
    "avg_incremental_accuracy,last_accuracy,forgetting,"
    "nme_avg_incremental_accuracy,nme_last_accuracy"
)


def overrides(name: str, epochs: int) -> list[str]:
    """What learner ``name`` needs on the shared protocol."""
    from cilkit.learners import LEARNERS

    learner = LEARNERS.get(name).obj
    out = [f"learner.name={name}"]
    if not learner.uses_memory:
        out.append("memory.memory_size=null")
    if learner.memory_selection:
        out.append(f"memory.selection={learner.memory_selection}")
    if name in STAGE_EPOCHS:
        out.append(f"{STAGE_EPOCHS[name]}={epochs}")
    if name == "gdumb":
        out.append(f"learner.epochs={epochs * GDUMB_STEPS_FACTOR}")
    out += AUTHORS_SETTINGS.get(name, []) + SHORT_SCHEDULE.get(name, [])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/cifar10_cil_cpu.yaml")
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--learners", help="comma-separated (default: every registered learner)")
    p.add_argument("--seeds", default="1993")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--extra", action="append", default=[], help="override for every run")
    p.add_argument("--dry-run", action="store_true", help="print the seeds.py command only")
    args = p.parse_args()

    from cilkit.config import load_config
    from cilkit.learners import LEARNERS

    epochs = load_config(args.config).train.epochs
    names = args.learners.split(",") if args.learners else LEARNERS.names()
    cmd = [sys.executable, str(Path(__file__).with_name("seeds.py")), "--out", args.out]
    cmd += ["--seeds", args.seeds, "--jobs", str(args.jobs), "--metrics", METRICS]
    for name in names:
        parts = [args.config, f"data.root={args.data_root}", *overrides(name, epochs)]
        cmd += ["--variant", f"{name}=" + ",".join(parts + args.extra)]
    if args.dry_run:
        print(" ".join(cmd))
        return
    raise SystemExit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
