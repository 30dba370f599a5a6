"""The frozen-feature cache: backbone forward passes and time of a run with and without it.

A method that classifies a frozen network's features (SimpleCIL, RanPAC, FeCAM, ...) runs the
network over the test images of every class seen so far at every evaluation: a T-task run
computes the test features of task 1 T times. With ``engine.feature_cache`` (the default) the
engine computes each test image's features once while the network's values stay the same.
This script runs the same config with the cache on and off, back to back in one process
(after a discarded warm-up run, ``--repeat`` pairs in alternating order), counts the images that went through the backbone in each
run (a forward hook: training, class means and evaluation together), checks that both runs
give the same accuracies, and prints one table::

    python benchmarks/feature_cache.py -c configs/ptm_quickstart.yaml --repeat 3 \
        scenario.initial_increment=1 scenario.increment=1

The expected count with the cache is one pass per training image plus one per test image.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from cilkit.config import load_config
from cilkit.engine.trainer import Trainer


class CountingTrainer(Trainer):
    """A Trainer that counts the images its learner's backbone processes."""

    images = 0

    def setup(self, dist=None):
        parts = super().setup(dist)

        def count(module, inputs, output):
            self.images += int(inputs[0].shape[0])

        parts.learner.network.backbone.register_forward_hook(count)
        return parts


def run(config: str, overrides: list[str], cache: bool, out: Path) -> dict:
    cfg = load_config(config, [*overrides, f"engine.feature_cache={str(cache).lower()}"])
    trainer = CountingTrainer(cfg, out, source=config, log=None)
    start = time.perf_counter()
    summary = trainer.fit()
    seconds = time.perf_counter() - start
    return {
        "cache": cache,
        "images_through_backbone": trainer.images,
        "seconds": round(seconds, 2),
        "summary": {k: v for k, v in summary.items() if "accuracy" in k},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", default="configs/ptm_quickstart.yaml")
    p.add_argument("--repeat", type=int, default=1, help="pairs of runs (medians reported)")
    p.add_argument("--no-warmup", action="store_true", help="skip the discarded first run")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.name=ranpac")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_warmup:  # imports, the dataset's decode cache, first-call allocations
            run(args.config, args.overrides, True, Path(tmp) / "warmup")
        for i in range(args.repeat):
            order = [True, False] if i % 2 == 0 else [False, True]  # alternate the order
            for cache in order:
                out = Path(tmp) / f"cache-{cache}-{i}"
                results.append(run(args.config, args.overrides, cache, out))
        cfg = load_config(args.config, args.overrides)
        from cilkit.data.base import create_dataset

        data = create_dataset(cfg.data)
        n_train, n_test = len(data.train), len(data.test)
    on = [r for r in results if r["cache"]]
    off = [r for r in results if not r["cache"]]
    print(f"config {args.config} {' '.join(args.overrides)}")
    print(f"training images {n_train}, test images {n_test}; {args.repeat} pair(s) of runs")
    print("| feature cache | images through the backbone | seconds (median) | every run |")
    print("|---|---:|---:|---|")
    for name, rows in (("on", on), ("off", off)):
        secs = [r["seconds"] for r in rows]
        every = ", ".join(str(x) for x in secs)
        print(f"| {name} | {rows[0]['images_through_backbone']} | {median(secs)} | {every} |")
    same = all(r["summary"] == on[0]["summary"] for r in results)
    ratio = median(r["seconds"] for r in off) / median(r["seconds"] for r in on)
    print(f"identical accuracies: {same}; median time off/on {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "identical": same}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
