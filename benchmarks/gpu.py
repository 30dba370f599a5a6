#!/usr/bin/env python3
"""One command for a GPU machine: cilkit's speed and bf16 accuracy in one table (issue 12).

Runs from the source tree with the python, torch and packages already on the machine (it
installs nothing) and needs only data small enough to copy along:

    PYTHONPATH=src python3 benchmarks/gpu.py --data-root DIR [--out gpu-results]

``DIR`` holds CIFAR-10 as ``cifar10-jpeg.tar.gz`` + ``cifar10_jpeg_to_batches.py`` (the shared
data, under 20 MiB; the official layout is built once in ``--cache-dir``) or as
``cifar-10-batches-py/``. The 100-class workload is synthetic: random 32x32 images written in
CIFAR-100's official python format (50,000 train, 10,000 test) and read by cilkit's
``cifar100`` loader, so its timing is CIFAR-100's (the accuracy on it means nothing).

Parts, in order (the time each took is printed with it):

1. **Training step**: ``benchmarks/throughput.py`` on the GPU, cilkit vs the PyCIL-style
   pipeline at batch 128, with bf16 autocast for cilkit and with both in fp32.
2. **iCaRL, B0 Inc10 on the 100-class data**: the PyCIL protocol (200 + 9 x 170 epochs, 2,000
   exemplars, herding, ResNet-32). ``--fraction F`` runs every task's epochs and milestones
   scaled by F (default 0.1: 20 + 9 x 17 epochs) and reports the full protocol's time as
   *extrapolated*: training time / F plus the measured time outside training; F = 1 is the
   real thing. Wall time, training time and peak GPU memory.
3. **DER at 10 tasks**: the seconds of one epoch of the tenth task (ten extractors), on the
   same data, one epoch per task.
4. **bf16 vs fp32 accuracy**: ``configs/cifar10_cil_cpu.yaml`` (iCaRL, CIFAR-10, 5 x 2 classes)
   once with ``engine.amp=bf16`` and once with ``engine.amp=off``.
5. **Runs sharing the GPU**: the same CIFAR-10 config as ``cilkit run`` processes (as
   ``benchmarks/seeds.py`` starts them), one alone and then ``--concurrent`` of them at once
   with different seeds: each run's wall time, and the throughput of the group against runs
   one after another (``K x alone / slowest of the K``).

Everything is also written to ``OUT/gpu.json`` and the run directories stay in ``OUT/runs``.
``--smoke`` shrinks every part to a few steps on the CPU (what the test suite runs, to keep
the script working where no GPU is; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import seeds  # noqa: E402  (benchmarks/seeds.py)
import throughput  # noqa: E402  (benchmarks/throughput.py)


def _batch(rng: np.random.Generator, classes: int, per_class: int, key: bytes) -> dict:
    labels = np.tile(np.arange(classes), per_class)
    rng.shuffle(labels)
    return {
        b"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
        key: [int(y) for y in labels],
        b"filenames": [f"{i}.png".encode() for i in range(len(labels))],
    }


def write_synthetic_cifar100(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """Random images in CIFAR-100's official python layout under ``root/cifar-100-python``."""
    folder = root / "cifar-100-python"
    if (folder / "meta").is_file():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, k in (("train", train_per_class), ("test", test_per_class)):
        batch = _batch(rng, 100, k, b"fine_labels")
        batch[b"coarse_labels"] = [y // 5 for y in batch[b"fine_labels"]]
        (folder / split).write_bytes(pickle.dumps(batch))
    meta = {
        b"fine_label_names": [f"class_{i:02d}".encode() for i in range(100)],
        b"coarse_label_names": [f"group_{i:02d}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return root


def write_synthetic_cifar10(root: Path, per_class: int) -> Path:
    """Random images in CIFAR-10's official python layout (``--smoke`` only)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(_batch(rng, 10, per_class, b"labels")))
    names = {b"label_names": [f"class_{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(names))
    return root


def cifar10_root(args: argparse.Namespace) -> Path:
    """A folder holding ``cifar-10-batches-py`` (built from the JPEG archive when needed)."""
    root = Path(args.data_root)
    if (root / "cifar-10-batches-py").is_dir():
        return root
    ns = argparse.Namespace(
        data_root=str(root),
        synthetic=False,
        cache_dir=args.cache_dir,
        num_images=1,
        seed=0,
    )
    throughput.load_data(ns)  # builds the official layout in the cache when it is not there
    return Path(args.cache_dir)


def run(name: str, out: Path, config: str | None, overrides: list[str]) -> dict:
    """One in-process ``cilkit run``: its summary, wall seconds and peak GPU memory."""
    from cilkit.config import load_config
    from cilkit.engine.trainer import Trainer

    cfg = load_config(config, ["engine.progress=none", "engine.tensorboard=false", *overrides])
    cuda = torch.cuda.is_available() and cfg.engine.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summary = Trainer(cfg, out / "runs" / name, log=None).fit()
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"summary": summary, "wall_s": wall, "peak_gib": peak, "overrides": overrides}


def run_processes(out: Path, config: str, overrides: list[str], seed_list) -> list[dict]:
    """``cilkit run`` subprocesses of one config, one per seed, started together as
    ``seeds.py`` starts them: each one's wall seconds (start to exit) and its summary's
    training seconds."""
    out.mkdir(parents=True, exist_ok=True)
    env = seeds.run_env(str(REPO / "src"))
    overrides = [*overrides, "engine.progress=none", "engine.tensorboard=false"]
    running = {}
    for seed in seed_list:
        run_dir = out / f"seed-{seed}"
        cmd = [*seeds.CILKIT_RUN, "--out", str(run_dir), "--overwrite"]
        cmd += seeds.seed_args(config, seed, overrides)
        with (out / f"seed-{seed}.stderr").open("w") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        running[seed] = (run_dir, proc, time.perf_counter())
    ended: dict[int, float] = {}
    while len(ended) < len(running):  # each run's own end, whatever order they finish in
        for seed, (_, proc, start) in running.items():
            if seed not in ended and proc.poll() is not None:
                ended[seed] = time.perf_counter() - start
        time.sleep(0.2)
    results = []
    for seed, (run_dir, proc, _) in running.items():
        if proc.returncode != 0:
            tail = (out / f"seed-{seed}.stderr").read_text()[-500:]
            raise RuntimeError(f"cilkit run seed={seed} exited {proc.returncode}: {tail}")
        summary = json.loads((run_dir / "summary.json").read_text())
        results.append(
            {
                "seed": seed,
                "wall_s": ended[seed],
                "train_s": summary["train_seconds"],
                "avg_incremental_accuracy": summary["avg_incremental_accuracy"],
            }
        )
    return results


def scaled(values: list[int], fraction: float) -> str:
    return "[" + ",".join(str(max(1, round(v * fraction))) for v in values) + "]"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(throughput.DEFAULT_DATA_ROOT))
    p.add_argument("--out", default="gpu-results")
    p.add_argument("--cache-dir", default=str(throughput.DEFAULT_CACHE / "cifar10"))
    p.add_argument("--fraction", type=float, default=0.1, help="share of iCaRL's epochs run")
    p.add_argument("--smoke", action="store_true", help="a few steps of everything, on the CPU")
    p.add_argument("--concurrent", type=int, default=4, help="runs sharing the GPU in part 5")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        args.data_root = str(write_synthetic_cifar10(out / "synthetic10", per_class=10))
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine (or pass --smoke)")
    result: dict = {"device": throughput.device_name(torch.device(device)), "parts": {}}
    t0 = time.perf_counter()

    def part(name: str, fn):
        """Run one part; a failure is recorded and the next part still runs (a GPU lease is
        too short to lose the rest to one missing package)."""
        start = time.perf_counter()
        print(f"\n=== {name} ===", flush=True)
        try:
            value = fn()
        except Exception as err:  # noqa: BLE001  (reported in the table and the JSON)
            traceback.print_exc()
            value = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}
        result["parts"][name] = value
        value["part_s"] = round(time.perf_counter() - start, 1)
        print(f"--- {name}: {value['part_s']} s (total {time.perf_counter() - t0:.0f} s)")
        (out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))

    # 1. the training step
    steps = ["--steps", "2", "--warmup", "1", "--repeats", "1", "--num-images", "64"]
    steps += ["--batch-size", "16", "--num-workers", "0"]
    if not args.smoke:
        steps = ["--steps", "150", "--warmup", "20", "--repeats", "3", "--num-workers", "8"]
    common = ["--device", device, "--data-root", args.data_root, "--cache-dir", args.cache_dir]

    def step_throughput() -> dict:
        bf16 = throughput.main([*common, *steps])
        fp32 = throughput.main([*common, *steps, "--no-amp"])
        return {"bf16": bf16, "fp32": fp32}

    part("training step", step_throughput)

    # 2. iCaRL's protocol on 100 synthetic classes
    per_class = (3, 1) if args.smoke else (500, 100)
    c100 = write_synthetic_cifar100(out / "synthetic", *per_class)
    data = [f"data.root={c100}", "data.download=false", f"engine.device={device}"]
    tiny = ["backbone.name=convnet4", "backbone.hidden=8"] if args.smoke else []
    data += tiny
    f = args.fraction
    icarl = [
        *data,
        f"train.epochs={max(1, round(170 * f))}",
        f"train.init_epochs={max(1, round(200 * f))}",
        f"optim.milestones={scaled([80, 120], f)}",
        f"optim.init_milestones={scaled([60, 120, 170], f)}",
    ]
    if args.smoke:
        icarl += ["train.epochs=1", "train.init_epochs=1", "scenario.increment=50"]
        icarl += ["scenario.initial_increment=50", "memory.memory_size=100"]

    def icarl_protocol() -> dict:
        r = run(
            "icarl_b0_inc10",
            out,
            str(REPO / "configs/experiments/icarl_cifar100_b0_inc10.yaml"),
            icarl,
        )
        train = r["summary"]["train_seconds"]
        r["train_s"] = train
        r["outside_training_s"] = r["wall_s"] - train
        r["fraction"] = f
        r["full_protocol_s"] = r["wall_s"] if f == 1 else train / f + r["outside_training_s"]
        r["extrapolated"] = f != 1
        return r

    part("icarl protocol", icarl_protocol)

    # 3. DER's epoch at ten tasks
    der = [*data, "train.epochs=1", "train.init_epochs=1", "optim.scheduler=constant"]
    if args.smoke:
        der += ["scenario.initial_increment=10", "scenario.increment=30", "memory.memory_size=100"]

    def der_epoch() -> dict:
        r = run(
            "der_10_tasks", out, str(REPO / "configs/experiments/der_cifar100_b0_inc10.yaml"), der
        )
        epochs = [json.loads(x) for x in (out / "runs/der_10_tasks/epochs.jsonl").open()]
        last = max(e["task_id"] for e in epochs)
        r["tasks"] = last + 1
        r["last_task_epoch_s"] = [e["seconds"] for e in epochs if e["task_id"] == last][-1]
        return r

    part("der epoch at ten tasks", der_epoch)

    # 4. bf16 vs fp32 accuracy on CIFAR-10
    c10 = [f"data.root={cifar10_root(args)}", f"engine.device={device}", *tiny]
    if args.smoke:
        c10 += ["train.epochs=1", "scenario.initial_increment=5", "scenario.increment=5"]

    def precision() -> dict:
        config = str(REPO / "configs/cifar10_cil_cpu.yaml")
        return {
            amp: run(f"cifar10_{amp}", out, config, [*c10, f"engine.amp={amp}"])
            for amp in ("bf16", "off")
        }

    part("bf16 vs fp32 on cifar10", precision)

    # 5. several `cilkit run` processes on one GPU
    def sharing() -> dict:
        config = str(REPO / "configs/cifar10_cil_cpu.yaml")
        alone = run_processes(out / "runs" / "alone", config, c10, [1993])
        group = run_processes(out / "runs" / "shared", config, c10, range(1993, 1993 + k))
        slowest = max(r["wall_s"] for r in group)
        return {
            "runs": k,
            "alone": alone[0],
            "together": group,
            "throughput_vs_sequential": k * alone[0]["wall_s"] / slowest,
        }

    k = 2 if args.smoke else args.concurrent
    part("runs sharing the device", sharing)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    (out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
    print_table(result)
    return result


def table_rows(result: dict) -> list[tuple[str, str]]:
    """The table: one row per measure; a part that failed is one row with its error."""
    parts = result["parts"]
    rows: list[tuple[str, str]] = []

    def failed(name: str) -> bool:
        if "error" in parts.get(name, {"error": "not run"}):
            rows.append((name, "failed: " + parts.get(name, {}).get("error", "not run")))
            return True
        return False

    if not failed("training step"):
        for prec in ("bf16", "fp32"):
            t = parts["training step"][prec]
            med = {k: v["median_images_per_s"] for k, v in t["variants"].items()}
            rows.append(
                (f"ResNet-32 step, batch 128, cilkit ({prec}) img/s", f"{med['cilkit']:.0f}")
            )
            rows.append(("  PyCIL-style pipeline (fp32) img/s", f"{med['pycil']:.0f}"))
            rows.append(("  ratio of medians", f"{t['ratios_of_medians']['cilkit/pycil']:.2f}x"))
    if not failed("icarl protocol"):
        ic = parts["icarl protocol"]
        how = f"extrapolated from a fraction {ic['fraction']}" if ic["extrapolated"] else "run"
        rows.append(
            (
                f"iCaRL B0 Inc10, 100 classes, whole protocol ({how}) s",
                f"{ic['full_protocol_s']:.0f}",
            )
        )
        measured = f"{ic['wall_s']:.0f} / {ic['train_s']:.0f} / {ic['outside_training_s']:.0f}"
        rows.append(("  run measured: wall / training / outside training s", measured))
        if ic["peak_gib"] is not None:
            rows.append(("  peak GPU memory GiB", f"{ic['peak_gib']:.2f}"))
    if not failed("der epoch at ten tasks"):
        d = parts["der epoch at ten tasks"]
        rows.append((f"DER, one epoch of task {d['tasks']} s", f"{d['last_task_epoch_s']:.2f}"))
    if not failed("bf16 vs fp32 on cifar10"):
        for amp in ("bf16", "off"):
            s = parts["bf16 vs fp32 on cifar10"][amp]["summary"]
            acc = f"{s['avg_incremental_accuracy']:.2f} / {s['last_accuracy']:.2f}"
            rows.append((f"CIFAR-10 iCaRL amp={amp}: CNN avg / last %", acc))
    if not failed("runs sharing the device"):
        sh = parts["runs sharing the device"]
        rows.append(("CIFAR-10 iCaRL run alone: wall s", f"{sh['alone']['wall_s']:.0f}"))
        walls = " / ".join(f"{r['wall_s']:.0f}" for r in sh["together"])
        rows.append((f"  {sh['runs']} runs at once: each run's wall s", walls))
        rows.append(
            ("  their throughput vs one after another", f"{sh['throughput_vs_sequential']:.2f}x")
        )
    rows.append(("whole benchmark s", f"{result['total_s']:.0f}"))
    return rows


def print_table(result: dict) -> None:
    rows = table_rows(result)
    width = max(len(k) for k, _ in rows)
    print(f"\n{result['device']}")
    print(f"{'measure':<{width}}  value")
    print("-" * width + "  " + "-" * 12)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
