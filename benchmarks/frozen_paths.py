"""Two ways to run frozen networks faster, measured before either goes into the engine.

A teacher (iCaRL's old network) and the old extractors of DER, MEMO and FOSTER run forward on
every training batch, in eval mode, with fixed weights. Issue 12 asks for two shortcuts:

- **BatchNorm folded into the convolution before it.** In eval mode BN is an affine map per
  channel, so ``bn(conv(x))`` equals one convolution with scaled weights and a bias (exact in
  real numbers; in floats the results differ by rounding). This times a ResNet-32 forward
  with and without folding.
- **Old extractors batched with ``torch.vmap``.** DER at task ``k`` runs ``k - 1`` frozen
  ResNet-32s of one architecture on the same batch. ``torch.func.stack_module_state`` stacks
  their weights and ``torch.vmap`` runs them as one call (the convolutions become grouped
  convolutions). This times that against a Python loop over the extractors.

Both run under ``torch.no_grad()`` (the engine's teacher path) and report the largest absolute
difference from the plain computation. Weights and BN statistics are random, not trained:
the timing does not depend on their values.

    python benchmarks/frozen_paths.py [--device cpu|cuda] [--threads 1] [--batch 128]
        [--extractors 4] [--repeats 7] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from cilkit.backbones.blocks import BasicBlock
from cilkit.backbones.resnet_cifar import CifarResNet


def _randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator))
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=generator))


def fold_batchnorm(model: CifarResNet) -> CifarResNet:
    """A copy of ``model`` (eval mode) with every BN folded into the convolution before it."""
    folded = copy.deepcopy(model).eval()
    folded.stem[0] = fuse_conv_bn_eval(folded.stem[0], folded.stem[1])
    folded.stem[1] = nn.Identity()
    for block in folded.modules():
        if isinstance(block, BasicBlock):
            block.conv1 = fuse_conv_bn_eval(block.conv1, block.bn1)
            block.bn1 = nn.Identity()
            block.conv2 = fuse_conv_bn_eval(block.conv2, block.bn2)
            block.bn2 = nn.Identity()
    return folded


def _time(fn: Callable[[], torch.Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _pair(
    plain: Callable[[], torch.Tensor], fast: Callable[[], torch.Tensor], repeats: int, device
) -> dict:
    """Median seconds of each, run alternately (order reversed every other round)."""
    for fn in (plain, fast):  # warm-up (cuDNN algorithm choice, allocator)
        fn()
    a, b = [], []
    for r in range(repeats):
        order = [(plain, a), (fast, b)]
        for fn, times in order if r % 2 == 0 else order[::-1]:
            times.append(_time(fn, device))
    with torch.no_grad():
        diff = (plain() - fast()).abs().max().item()
    ratio = statistics.median(a) / statistics.median(b)
    return {
        "plain_ms": 1e3 * statistics.median(a),
        "fast_ms": 1e3 * statistics.median(b),
        "speedup": ratio,
        "max_abs_diff": diff,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--extractors", type=int, default=4, help="frozen extractors batched by vmap")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    layout = torch.channels_last
    x = torch.randn(args.batch, 3, 32, 32, generator=g).to(device, memory_format=layout)

    model = CifarResNet(32).eval()
    _randomise_batchnorm(model, g)
    model = model.to(device, memory_format=layout)
    folded = fold_batchnorm(model).to(memory_format=layout)

    models = []
    for _ in range(args.extractors):
        m = CifarResNet(32).eval()
        _randomise_batchnorm(m, g)
        models.append(m.to(device, memory_format=layout))
    params, buffers = torch.func.stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def one(p: dict, b: dict, images: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(skeleton, (p, b), (images,))

    batched = torch.vmap(one, in_dims=(0, 0, None))
    with torch.no_grad():
        rows = {
            "BN folded (one ResNet-32)": _pair(
                lambda: model(x), lambda: folded(x), args.repeats, device
            ),
            f"vmap over {args.extractors} frozen ResNet-32s": _pair(
                lambda: torch.stack([m(x) for m in models]),
                lambda: batched(params, buffers, x),
                args.repeats,
                device,
            ),
        }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, {args.threads} thread(s), batch {args.batch}, channels_last, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print("| shortcut | plain ms | with it ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        print(
            f"| {label} | {r['plain_ms']:.1f} | {r['fast_ms']:.1f} | {r['speedup']:.2f}x "
            f"| {r['max_abs_diff']:.2e} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": name, "threads": args.threads, "batch": args.batch, **rows}, f, indent=2
            )


if __name__ == "__main__":
    main()
