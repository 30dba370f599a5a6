"""CPU threads under load: torch's default thread count against one thread and OpenMP's passive
wait policy, with 0, 1 or 2 other busy processes on the machine.

Each measurement is a fresh process (OpenMP reads its environment once) that trains ResNet-32 on
random CIFAR-sized batches (forward, backward, SGD step, channels_last) and reports seconds per
step after a warm-up. Conditions alternate within each round so a drifting machine affects them
alike; the table gives the median over rounds and each condition's ratio to one thread.

    python benchmarks/threads.py                      # 3 rounds, 0/1/2 busy processes
    python benchmarks/threads.py --rounds 5 --steps 30 --loads 0,2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

CONDITIONS = {
    "default threads": {"threads": 0, "env": {}},
    "1 thread": {"threads": 1, "env": {}},
    "default, OMP_WAIT_POLICY=passive": {"threads": 0, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
}


def _worker(threads: int, steps: int, batch: int) -> None:
    import torch

    from cilkit.backbones import create_network
    from cilkit.config.schema import BackboneConfig

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = create_network(BackboneConfig(name="resnet32"), 3)
    net.expand(10)
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    print(json.dumps({"seconds_per_step": seconds, "threads": torch.get_num_threads()}))


def _busy() -> None:
    while True:
        pass


def _measure(condition: dict, steps: int, batch: int) -> dict:
    env = {**os.environ, **condition["env"]}
    code = (
        f"from benchmarks.threads import _worker; _worker({condition['threads']}, {steps}, {batch})"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--loads", default="0,1,2", help="numbers of busy processes to run beside")
    args = p.parse_args()
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()}")
    for load in [int(v) for v in args.loads.split(",")]:
        busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(load)]
        for proc in busy:
            proc.start()
        try:
            times: dict[str, list[float]] = {name: [] for name in CONDITIONS}
            threads: dict[str, int] = {}
            for _ in range(args.rounds):
                for name, condition in CONDITIONS.items():
                    result = _measure(condition, args.steps, args.batch)
                    times[name].append(result["seconds_per_step"])
                    threads[name] = result["threads"]
        finally:
            for proc in busy:
                proc.terminate()
        one = statistics.median(times["1 thread"])
        print(f"\n{load} busy process(es) beside; median of {args.rounds} rounds")
        print(f"{'condition':36} {'threads':>7} {'s/step':>8} {'vs 1 thread':>12}  per round")
        for name, values in times.items():
            med = statistics.median(values)
            rounds = " ".join(f"{v:.3f}" for v in values)
            print(f"{name:36} {threads[name]:>7} {med:8.3f} {med / one:11.2f}x  {rounds}")


if __name__ == "__main__":
    main()
