"""DER++ against replay as the epochs per task grow, on the bundled digits (issue 9's DER++
finding in docs/REPRODUCIBILITY.md).

5 tasks of 2 classes, ConvNet-4 (32 channels), 200 memory slots (DER++'s reservoir, replay's
herding), SGD lr 0.05 constant, batch 64, seed 0, one thread. Prints average incremental and
last CNN accuracy, and old / new accuracy after the last task, for each variant:

    python benchmarks/derpp_schedule.py [--epochs 3,6,15] [--extra learner.beta=1.0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def run(name: str, epochs: int, extra: list[str]) -> str:
    from cilkit.config import build_config
    from cilkit.engine.trainer import Trainer
    from cilkit.learners import LEARNERS

    selection = LEARNERS.get(name).obj.memory_selection  # DER++'s reservoir
    protocol = (
        "seed=0 data.name=digits scenario.initial_increment=2 scenario.increment=2 "
        "backbone.name=convnet4 backbone.hidden=32 optim.lr=0.05 optim.scheduler=constant "
        "optim.weight_decay=0.0 train.batch_size=64 engine.progress=none engine.num_threads=1 "
        "memory.memory_size=200"
    ).split()
    protocol += [f"learner.name={name}", f"train.epochs={epochs}"]
    protocol += [f"memory.selection={selection}"] if selection else []
    cfg = build_config({}, [*protocol, *extra])
    with tempfile.TemporaryDirectory() as out:
        s = Trainer(cfg, out, log=None).fit()
        last = json.loads((Path(out) / "metrics.jsonl").read_text().splitlines()[-1])
    return (
        f"{name:<7} {epochs:>3} epochs {' '.join(extra):<20} avg {s['avg_incremental_accuracy']:6.2f}"
        f"  last {s['last_accuracy']:6.2f}  old/new {last['old_accuracy']:5.1f}/{last['new_accuracy']:5.1f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", default="3,6,15")
    p.add_argument("--learners", default="derpp,replay")
    p.add_argument("--extra", action="append", default=[], help="override for DER++ only")
    args = p.parse_args()
    for epochs in map(int, args.epochs.split(",")):
        for name in args.learners.split(","):
            print(run(name, epochs, args.extra if name == "derpp" else []), flush=True)


if __name__ == "__main__":
    main()
