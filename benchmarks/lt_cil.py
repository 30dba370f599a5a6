"""The long-tailed CIL comparison of docs/REPRODUCIBILITY.md: the LT methods against iCaRL and
iCaRL+LWS with the same memory, and an ablation of each part of the prototype method.

Runs ``benchmarks/seeds.py`` on ``configs/lt/tinyimagenet100_lt100_cil_cpu.yaml`` (the
Tiny-ImageNet half at 32x32, IF=100, B50 then 5 tasks of 10, 20 exemplars per class), once with
the ordered class order (head classes first) and once shuffled (``class_order_seed=1993``).
Every method trains the protocol's epochs per task, and its extra stage (LWS, MiSLAS's stage 2,
the prototype method's bias layer) as many; the prototype method keeps its own optimiser (Adam,
lr 1e-3, as the seed), the others SGD.

    python benchmarks/lt_cil.py --data-root /path/to/tiny-imagenet-100a --out runs/lt_cil \\
        [--orders ordered,shuffled] [--variants icarl,mislas] [--jobs 2] [--dry-run]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CONFIG = "configs/lt/tinyimagenet100_lt100_cil_cpu.yaml"
EPOCHS = 5
PROTO = [
    "learner.name=proto_ltcil",
    f"learner.bias_epochs={EPOCHS}",
    "optim.name=adam",
    "optim.lr=0.001",
    "optim.weight_decay=0.0",
]
VARIANTS = {
    "icarl": ["learner.name=icarl"],
    "icarl_lws": [
        "learner.name=icarl",
        "learner.rebalance.method=lws",
        f"learner.rebalance.epochs={EPOCHS}",
    ],
    "mislas": ["learner.name=mislas", f"learner.stage2_epochs={EPOCHS}"],
    "proto_ltcil": PROTO,
    "proto_no_mix": [*PROTO, "learner.mix=false"],
    "proto_no_pull": [*PROTO, "learner.pull_weight=0"],
    "proto_no_push": [*PROTO, "learner.push_weight=0"],
    "proto_no_bias": [*PROTO, "learner.bias_epochs=0"],
}
ORDERS = {"ordered": [], "shuffled": ["scenario.class_order_seed=1993"]}
METRICS = (
    "avg_incremental_accuracy,last_accuracy,nme_avg_incremental_accuracy,nme_last_accuracy,"
    "many_accuracy,medium_accuracy,few_accuracy,train_seconds"
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--orders", default="ordered,shuffled")
    p.add_argument("--variants", help="comma-separated (default: all)")
    p.add_argument("--seeds", default="1993")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--extra", action="append", default=[], help="override for every run")
    p.add_argument("--src", help="run the cilkit source tree at this src/ folder (seeds.py)")
    p.add_argument("--dry-run", action="store_true", help="print the seeds.py commands only")
    args = p.parse_args()
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    status = 0
    for order in args.orders.split(","):
        cmd = [sys.executable, str(Path(__file__).with_name("seeds.py"))]
        cmd += ["--out", f"{args.out}/{order}", "--seeds", args.seeds, "--jobs", str(args.jobs)]
        cmd += ["--metrics", METRICS] + (["--src", args.src] if args.src else [])
        for name in names:
            parts = [CONFIG, f"data.root={args.data_root}", *VARIANTS[name], *ORDERS[order]]
            cmd += ["--variant", f"{name}=" + ",".join(parts + args.extra)]
        if args.dry_run:
            print(" ".join(cmd))
            continue
        status = status or subprocess.call(cmd)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
