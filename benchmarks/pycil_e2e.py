#!/usr/bin/env python3
"""End to end against PyCIL's own code: iCaRL on the same data, protocol and machine (issue 12).

PyCIL (https://github.com/LAMDA-CL/PyCIL) is run unmodified from a checkout named with
``--pycil``: this script only gives it a dataset and the epoch counts, then calls its
``trainer.train``. Its iCaRL reads its schedule from module constants (``init_epoch = 200``,
``epochs = 170``, the milestones, ``num_workers = 8``); ``--epochs E`` sets both epoch counts to E
and scales the milestones by the same factor (dropping those that fall past the end), and
``--workers`` sets its DataLoader workers (default: PyCIL's 8). One fix to what it logs: PyCIL
groups its accuracies by 10 classes whatever the increment, and its forgetting table then fails
after the last task when the increment is not 10, so the grouping is set to the increment.
cilkit runs
``configs/experiments/icarl_tinyimagenet100_b0_inc10.yaml`` (PyCIL's iCaRL schedule) with the
same epochs, milestones, increments and seed, once per cilkit variant in ``--sides`` (``fp32``:
``engine.amp=off``; ``bf16``: ``engine.amp=bf16``, bf16 autocast on the CPU, fast where the CPU
has AMX or AVX-512 BF16 units).

Data: the Tiny-ImageNet half (or the full set) at 32x32, read once by cilkit's ``tiny_imagenet``
loader, which caches the decoded images; both sides then start from that cache (PyCIL gets the
arrays as an ``iData`` with CIFAR-100's transforms: random crop with padding 4, flip, brightness
jitter 63/255, normalised with the set's mean and std; cilkit uses its ``cifar`` augmentation,
the same operations batched). The class order is each toolbox's own shuffle of seed 1993.

Each side is one child process with ``--threads`` torch threads (``OMP_NUM_THREADS`` too); its
wall time and CPU time (the process and the children it waited for, i.e. PyCIL's DataLoader
workers) are measured from here, so imports, data loading, training, herding, class means,
evaluation and logging all count. Prints one table and writes ``OUT/pycil_e2e.json``.

    python benchmarks/pycil_e2e.py --pycil /path/to/PyCIL --data-root /path/to/tiny-imagenet-100a \\
        --out runs/pycil_e2e --epochs 1 --increment 20 --threads 1
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import seeds  # noqa: E402  (benchmarks/seeds.py: how a cilkit run is started)

CONFIG = REPO / "configs" / "experiments" / "icarl_tinyimagenet100_b0_inc10.yaml"
# PyCIL's models/icarl.py schedule (and the config's)
INIT_EPOCHS, EPOCHS = 200, 170
INIT_MILESTONES, MILESTONES = (60, 120, 170), (80, 120)
CILKIT_VARIANTS = {"fp32": ["engine.amp=off"], "bf16": ["engine.amp=bf16"]}


def scaled(milestones: tuple[int, ...], full: int, epochs: int) -> list[int]:
    """``milestones`` of a ``full``-epoch schedule moved to an ``epochs``-epoch one."""
    out = sorted({max(1, round(m * epochs / full)) for m in milestones})
    return [m for m in out if m < epochs]


def load_arrays(data_root: str):
    """cilkit's 32x32 decode of the Tiny-ImageNet folder (cached after the first call)."""
    from cilkit.config.schema import DataConfig
    from cilkit.data.base import create_dataset
    from cilkit.data.datasets import tiny_imagenet  # noqa: F401  (registers the adapter)

    return create_dataset(DataConfig(name="tiny_imagenet", root=data_root, image_size=32))


# ---- the PyCIL side (runs in a child process) -------------------------------------------------
def pycil_child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    ds = load_arrays(args.data_root)
    pycil = Path(args.pycil).resolve()
    sys.path.insert(0, str(pycil))
    import models.base as base  # PyCIL's
    import models.icarl as icarl  # PyCIL's
    import utils.data_manager as data_manager  # PyCIL's
    from torchvision import transforms
    from trainer import train  # PyCIL's
    from utils.data import iData  # PyCIL's

    class TinyImageNet32(iData):
        use_path = False
        train_trsf = [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=63 / 255),
            transforms.ToTensor(),
        ]
        test_trsf = [transforms.ToTensor()]
        common_trsf = [transforms.Normalize(mean=ds.mean, std=ds.std)]
        class_order = list(range(ds.train.num_classes))

        def download_data(self) -> None:
            self.train_data = ds.train.images.permute(0, 2, 3, 1).numpy()
            self.train_targets = ds.train.labels.numpy().astype(np.int64)
            self.test_data = ds.test.images.permute(0, 2, 3, 1).numpy()
            self.test_targets = ds.test.labels.numpy().astype(np.int64)

    original = data_manager._get_idata
    data_manager._get_idata = lambda name: TinyImageNet32() if name == "tiny32" else original(name)
    icarl.init_epoch, icarl.epochs = args.epochs, args.epochs
    icarl.init_milestones = scaled(INIT_MILESTONES, INIT_EPOCHS, args.epochs)
    icarl.milestones = scaled(MILESTONES, EPOCHS, args.epochs)
    icarl.num_workers = args.workers
    # PyCIL groups its logged accuracies by 10 classes whatever the increment, and its forgetting
    # table then fails after the last task of a run whose increment is not 10: group by tasks.
    base.accuracy = functools.partial(base.accuracy, increment=args.increment)
    out = Path(args.out) / "pycil"
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # PyCIL writes logs/ under the working directory
    train(
        {
            "prefix": "e2e",
            "dataset": "tiny32",
            "memory_size": args.memory,
            "memory_per_class": 20,
            "fixed_memory": False,
            "shuffle": True,
            "init_cls": args.increment,
            "increment": args.increment,
            "model_name": "icarl",
            "convnet_type": "resnet32",
            "device": [-1],  # PyCIL's CPU
            "seed": [args.seed],
        }
    )


def pycil_curves(log: str) -> dict[str, list[float]]:
    """The last CNN and NME top-1 curves PyCIL logged."""
    curves = {}
    for head in ("CNN", "NME"):
        found = re.findall(rf"{head} top1 curve: \[(.*)\]", log)
        if found:
            values = re.sub(r"np\.\w+\(([^()]*)\)", r"\1", found[-1])  # numpy 2 reprs
            curves[head] = [float(v) for v in values.split(",") if v.strip()]
    return curves


# ---- the parent ------------------------------------------------------------------------------
def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run ``cmd``; its wall seconds and CPU seconds (it and its waited-for children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def cilkit_cmd(args: argparse.Namespace, variant: str, run_dir: Path) -> list[str]:
    e = args.epochs
    return [
        *seeds.CILKIT_RUN, "-c", str(CONFIG), "--out", str(run_dir), "--overwrite",
        f"data.root={args.data_root}", f"seed={args.seed}",
        f"scenario.initial_increment={args.increment}", f"scenario.increment={args.increment}",
        f"train.epochs={e}", f"train.init_epochs={e}", f"memory.memory_size={args.memory}",
        f"optim.milestones={scaled(MILESTONES, EPOCHS, e)}",
        f"optim.init_milestones={scaled(INIT_MILESTONES, INIT_EPOCHS, e)}",
        f"engine.num_threads={args.threads}", *CILKIT_VARIANTS[variant],
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pycil", help="a PyCIL checkout (needed when --sides has pycil)")
    p.add_argument("--data-root", required=True, help="the Tiny-ImageNet folder")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=1, help="epochs per task (PyCIL: 200 / 170)")
    p.add_argument("--increment", type=int, default=20, help="classes per task (B0)")
    p.add_argument("--memory", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=8, help="PyCIL's DataLoader workers")
    p.add_argument("--seed", type=int, default=1993)
    p.add_argument("--sides", default="pycil,fp32,bf16", help="pycil and cilkit variants")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        pycil_child(args)
        return
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    bad = [s for s in sides if s != "pycil" and s not in CILKIT_VARIANTS]
    if bad:
        p.error(f"--sides: unknown {bad}; known: pycil, {', '.join(CILKIT_VARIANTS)}")
    if "pycil" in sides and not (args.pycil and (Path(args.pycil) / "trainer.py").is_file()):
        p.error("--pycil: give a PyCIL checkout (the folder holding trainer.py)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_arrays(args.data_root)  # builds the decode cache, so neither side pays for it
    print(f"data: {ds.provenance}")
    env = {**seeds.run_env(str(REPO / "src")), "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for side in sides:
        if side == "pycil":
            cmd = [sys.executable, __file__, "--child", *sys.argv[1:]]
            wall, cpu = timed(cmd, env, out / "pycil.log")
            curves = pycil_curves((out / "pycil.log").read_text(errors="replace"))
            cnn, nme = curves.get("CNN", []), curves.get("NME", [])
        else:
            run_dir = out / f"cilkit-{side}"
            wall, cpu = timed(cilkit_cmd(args, side, run_dir), env, out / f"cilkit-{side}.log")
            summary = json.loads((run_dir / "summary.json").read_text())
            cnn, nme = summary["task_accuracy"], summary.get("nme_task_accuracy", [])
        if len(cnn) != ds.train.num_classes // args.increment:
            raise SystemExit(f"{side}: {len(cnn)} tasks' accuracies found, not all of them")
        row = {"side": side, "wall_s": wall, "cpu_s": cpu, "cnn_curve": cnn, "nme_curve": nme}
        rows.append(row)
        print(f"{side}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)

    ref = next((r for r in rows if r["side"] == "pycil"), None)
    print(f"\n{'side':<8} {'wall s':>8} {'CPU s':>8} {'CNN avg/last':>14} {'NME avg/last':>14}"
          f" {'PyCIL CPU / side':>17}")  # fmt: skip
    for r in rows:
        cnn = r["cnn_curve"] or [float("nan")]
        nme = r["nme_curve"] or [float("nan")]
        ratio = f"{ref['cpu_s'] / r['cpu_s']:.2f}x" if ref else "-"
        print(
            f"{r['side']:<8} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} "
            f"{sum(cnn) / len(cnn):6.2f}/{cnn[-1]:6.2f} {sum(nme) / len(nme):6.2f}/{nme[-1]:6.2f}"
            f" {ratio:>17}"
        )
    header = {"argv": sys.argv[1:], "data": ds.provenance, "cores": os.cpu_count()}
    (out / "pycil_e2e.json").write_text(json.dumps({**header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
