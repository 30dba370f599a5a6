"""``benchmarks/throughput.py``: every variant runs (``cilkit-bf16`` under autocast on the CPU too), and the ``ceiling`` variant makes no batch
after its first (what makes it the bound of any data path)."""

from __future__ import annotations

import torch
from bench_scripts import load


def test_the_ceiling_reuses_its_first_batch_and_every_variant_reports():
    throughput = load("throughput")
    made = []

    def stream():
        while True:
            made.append(torch.randn(2, 3))
            yield made[-1], torch.zeros(2, dtype=torch.long)

    again = throughput.repeat_one(stream)()
    first = [next(again)[0] for _ in range(5)]
    assert len(made) == 1 and all(x is made[0] for x in first)

    threads = torch.get_num_threads()
    result = throughput.main(
        [
            "--synthetic",
            "--variants",
            ",".join(v for v in throughput.VARIANTS if "compiled" not in v),
        ]
        + ["--num-images", "32", "--batch-size", "8", "--steps", "1", "--warmup", "1"]
        + ["--repeats", "1", "--num-workers", "0", "--threads", "1"]
    )
    assert set(result["variants"]) == {"cilkit", "pycil", "cilkit-nchw", "cilkit-bf16", "ceiling"}
    assert result["variants"]["cilkit-bf16"]["precision"] == "bf16 autocast"  # on the CPU too
    assert result["variants"]["cilkit"]["precision"] == "fp32"
    assert all(v["median_images_per_s"] > 0 for v in result["variants"].values())
    assert set(result["ratios_of_medians"]) == {
        "cilkit/pycil",
        "cilkit-nchw/pycil",
        "cilkit-bf16/pycil",
        "ceiling/pycil",
    }
    assert torch.get_num_threads() == threads  # restored for an in-process caller
