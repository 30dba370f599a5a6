#!/usr/bin/env python3
"""Does evaluating under bf16 (or fp16) autocast change a trained run's results?

Issue 12 asks for bf16 autocast to be checked against fp32, with evaluation in fp32 where bf16
changes results. This script takes finished runs, loads a task checkpoint of each (the last by
default) as ``cilkit.inference.Predictor`` does, and evaluates every classifier of the learner
on the test classes seen at that task three ways with the engine's own ``predict_split``: in
fp32, under bf16 autocast and (on CUDA) under fp16 autocast. It prints the accuracies and the
share of test images whose top-1 class changed against fp32.

    python benchmarks/amp_eval.py runs/zoo/icarl/seed-1993 runs/zoo/der/seed-1993 [--device cuda]

On a CPU without native bf16 (AVX2), autocast emulates it: slow, but it rounds what a GPU
rounds (bf16 inputs and weights, fp32 accumulation), so the answer carries over roughly; the
GPU session runs it on CUDA too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def evaluate(run_dir: Path, checkpoint: str | None, device: str, batch: int) -> dict:
    from cilkit.engine.evaluate import predict_split
    from cilkit.inference import Predictor

    predictor = Predictor.from_run(run_dir, checkpoint=checkpoint, device=device)
    parts = predictor.parts
    seen = parts.test_scenario[: predictor.tasks]
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    if device.startswith("cuda"):
        dtypes["fp16"] = torch.float16
    out: dict = {"run": str(run_dir), "checkpoint": predictor.checkpoint, "images": len(seen)}
    reference = None
    for name, dtype in dtypes.items():
        start = time.perf_counter()
        top1, _, targets = predict_split(parts.learner, parts.test, seen.indices, batch, dtype)
        row = {"seconds": round(time.perf_counter() - start, 1)}
        for classifier, pred in top1.items():
            row[classifier] = round(100 * (pred == targets).float().mean().item(), 2)
            if reference is not None:
                changed = (pred != reference[classifier]).float().mean().item()
                row[f"{classifier} changed %"] = round(100 * changed, 3)
        if reference is None:
            reference = top1
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="finished run directories")
    p.add_argument("--checkpoint", help="task checkpoint name (default: the run's last)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    results = []
    for run in args.runs:
        r = evaluate(Path(run), args.checkpoint, args.device, args.batch_size)
        results.append(r)
        print(f"{r['run']} ({r['checkpoint']}, {r['images']} test images)")
        for name in ("fp32", "bf16", "fp16"):
            if name in r:
                cells = ", ".join(f"{k} {v}" for k, v in r[name].items())
                print(f"  {name}: {cells}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
