#!/usr/bin/env python3
"""Training throughput of ResNet-32: cilkit's on-device data path vs a PyCIL-style pipeline.

Both variants run the same full training step (forward, cross-entropy, backward, SGD step) on the
same images, with the same batch size, model and machine; only the way batches are produced (and
the memory layout / precision each toolbox uses) differs:

* ``cilkit``: the split is one uint8 tensor ``(N, C, H, W)`` on the device inside
  :class:`cilkit.engine.data.DeviceSplit`; ``train_batches`` gathers each batch there and
  :class:`cilkit.data.transforms.BatchTransform` applies the ``cifar`` preset (random crop with
  padding 4, horizontal flip, brightness jitter 63/255) and normalises to ``channels_last``. The
  model is ``channels_last``; on CUDA the step runs under bf16 autocast (cilkit's ``amp: auto``).
* ``pycil``: the way PyCIL feeds its models: a Dataset of uint8 HWC numpy images that runs
  ``Image.fromarray`` and ``Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(),
  ColorJitter(brightness=63/255), ToTensor(), Normalize(mean, std)])`` per image, a
  ``DataLoader(batch_size, shuffle=True, num_workers=W)``, ``.to(device)`` per batch; the model
  in the default contiguous layout, fp32.
* ``cilkit-nchw`` (optional, ``--variants``): cilkit's data path with a contiguous model and
  contiguous batches, to tell the data path's share from the memory layout's.
* ``cilkit-compiled`` (optional): ``cilkit`` with the backbone compiled as ``engine.compile``
  does (``torch.compile``, default inductor backend; the compilation runs in the warm-up, which
  then needs a few steps more).
* ``cilkit-bf16`` (optional): ``cilkit`` under bf16 autocast on any device, the CPU included
  (``engine.amp: bf16``); on CPUs with AMX or AVX-512 BF16 units the convolutions then run in
  bf16 (its accuracy against fp32 in training: ``benchmarks/README.md``, "bf16 on the CPU").
* ``ceiling`` (optional): the ``cilkit`` model training on one batch made once and reused, so
  no batch is produced at all: the most any data path can reach with this model, layout and
  precision on the machine (its ratio to ``pycil`` bounds what a faster data path can give).

Warm-up steps are excluded; each variant is timed for ``--steps`` steps per round, the variants
alternate for ``--repeats`` rounds (the order is reversed every other round), and the median
images/s per variant and the ratio of the medians are reported. Every round starts a fresh
epoch iterator (so the DataLoader's workers start during the warm-up, and no worker prefetches
while another variant is timed); epoch boundaries inside the timed steps are timed as in training.

Data: CIFAR-10's training split, read by cilkit's ``cifar10`` adapter from ``--data-root``
(default: ``$CILKIT_BENCH_DATA``, else ``shared/data`` next to the repository, i.e.
``../shared/data`` from the checkout's root). That folder holds either the official python
layout (``cifar-10-batches-py/``) or ``cifar10-jpeg.tar.gz`` with ``cifar10_jpeg_to_batches.py``,
from which the official layout is built once in ``--cache-dir``. When the default folder holds
neither (or with ``--synthetic``), random uint8 CIFAR-shaped images are used; a folder named
with ``--data-root`` or the variable that holds neither is an error. A random ``--num-images``
subset is used.

Examples::

    python benchmarks/throughput.py                      # CPU, defaults
    python benchmarks/throughput.py --device cuda --num-workers 8 --steps 200 --warmup 20
    python benchmarks/throughput.py --synthetic --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "CILKIT_BENCH_DATA"
"""Environment variable naming the data folder when ``--data-root`` is not given."""
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
"""The shared data folder, a sibling of the repository's checkout."""
JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"
JPEG_CONVERTER = "cifar10_jpeg_to_batches.py"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cilkit-bench"
VARIANTS = ("cilkit", "pycil", "cilkit-nchw", "cilkit-compiled", "cilkit-bf16", "ceiling")


# ---- data ------------------------------------------------------------------------------------
@dataclass
class Data:
    """The images both variants train on (CPU), with what normalisation needs."""

    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    labels: torch.Tensor  # int64 (N,)
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


def _load_cifar10(root: Path, source: str) -> Data:
    from cilkit.config.schema import DataConfig
    from cilkit.data.base import create_dataset
    from cilkit.data.datasets import cifar  # noqa: F401  (registers the adapter)

    ds = create_dataset(DataConfig(name="cifar10", root=str(root), download=False))
    source = f"{source}: {ds.provenance}"
    return Data(ds.train.images, ds.train.labels, ds.train.class_names, ds.mean, ds.std, source)


def _synthetic(n: int, seed: int, why: str) -> Data:
    from cilkit.data.datasets.cifar import CIFAR10_MEAN, CIFAR10_STD

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    names = tuple(f"class{i}" for i in range(10))
    return Data(images, labels, names, CIFAR10_MEAN, CIFAR10_STD, f"synthetic random uint8 ({why})")


def data_root(args: argparse.Namespace) -> tuple[Path, bool]:
    """The data folder, and whether it was chosen (``--data-root`` or ``$CILKIT_BENCH_DATA``)."""
    root = Path(args.data_root).expanduser()
    return root, root != DEFAULT_DATA_ROOT


def load_data(args: argparse.Namespace) -> Data:
    """CIFAR-10's training split (or synthetic images), cut to a random ``--num-images`` subset."""
    root, chosen = data_root(args)
    archive, converter = root / JPEG_ARCHIVE, root / JPEG_CONVERTER
    if args.synthetic:
        data = _synthetic(args.num_images, args.seed, "--synthetic")
    elif (root / "cifar-10-batches-py").is_dir() or (root / "batches.meta").is_file():
        data = _load_cifar10(root, "CIFAR-10 train")
    elif archive.is_file() and converter.is_file():
        cache = Path(args.cache_dir)
        if not (cache / "cifar-10-batches-py" / "batches.meta").is_file():
            print(f"building CIFAR-10 (official python layout) in {cache} from {archive} ...")
            cache.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, str(converter), str(cache)], check=True)
        data = _load_cifar10(cache, f"CIFAR-10 train (JPEG re-encoded copy, {archive})")
    elif chosen:
        raise SystemExit(
            f"no CIFAR-10 in {root}: expected cifar-10-batches-py/ or {JPEG_ARCHIVE} with "
            f"{JPEG_CONVERTER} (or pass --synthetic)"
        )
    else:
        why = f"no CIFAR-10 in {root}; pass --data-root"
        data = _synthetic(args.num_images, args.seed, why)
    n = min(args.num_images, len(data.labels))
    pick = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(args.seed))[:n]
    data.images = data.images[pick].contiguous()
    data.labels = data.labels[pick].contiguous()
    return data


# ---- the two ways of producing batches ----------------------------------------------------------
class PyCILStyleDataset(torch.utils.data.Dataset):
    """PyCIL's ``DummyDataset`` for in-memory images: PIL image + torchvision transforms per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, trsf: Callable) -> None:
        self.images = images  # uint8 (N, H, W, C)
        self.labels = labels
        self.trsf = trsf

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int):
        image = self.trsf(Image.fromarray(self.images[idx]))
        return idx, image, self.labels[idx]


Stream = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def cilkit_stream(
    data: Data, device: torch.device, batch_size: int, seed: int, channels_last: bool
) -> Stream:
    """Endless epochs of ``DeviceSplit.train_batches`` (augmented, normalised, on the device)."""
    from cilkit.data.base import ImageSet
    from cilkit.data.transforms import PRESETS, BatchTransform
    from cilkit.engine.data import DeviceSplit

    split = ImageSet(data.labels, data.class_names, data.images)
    transform = BatchTransform(data.mean, data.std, PRESETS["cifar"], channels_last=channels_last)
    ds = DeviceSplit(split, data.labels, transform, device)
    indices = torch.arange(len(ds))
    shuffle_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1)

    def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            for batch in ds.train_batches(indices, batch_size, shuffle_gen, aug_gen):
                yield batch.x, batch.y

    return stream


def repeat_one(stream: Stream) -> Stream:
    """The first batch of ``stream``, yielded forever (the ``ceiling`` variant)."""
    x, y = next(stream())

    def again() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield x, y

    return again


def pycil_stream(
    data: Data, device: torch.device, batch_size: int, seed: int, num_workers: int
) -> Stream:
    """Endless epochs of a PyCIL-style DataLoader; each batch moved to the device."""
    from torchvision import transforms

    trsf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=63 / 255),
            transforms.ToTensor(),
            transforms.Normalize(mean=data.mean, std=data.std),
        ]
    )
    images = np.ascontiguousarray(data.images.permute(0, 2, 3, 1).numpy())
    dataset = PyCILStyleDataset(images, data.labels.numpy(), trsf)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )

    def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            for _, x, y in loader:
                yield x.to(device), y.to(device)

    return stream


# ---- model, step, timing ------------------------------------------------------------------------
@dataclass
class Variant:
    name: str
    data_path: str
    layout: str
    precision: str
    stream: Stream
    model: nn.Module
    optimizer: torch.optim.Optimizer
    amp: torch.dtype | None
    rates: list[float]


def build_model(
    num_classes: int, device: torch.device, channels_last: bool, seed: int
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """cilkit's ResNet-32 with a ``num_classes`` head and PyCIL's first-task SGD settings."""
    from cilkit.backbones import create_network
    from cilkit.config.schema import BackboneConfig

    torch.manual_seed(seed)
    model = create_network(BackboneConfig(name="resnet32"), 3)
    model.expand(num_classes)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return model, opt


def train_step(v: Variant, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    ctx = (
        torch.autocast(device_type=device.type, dtype=v.amp)
        if v.amp is not None
        else contextlib.nullcontext()
    )
    with ctx:
        loss = F.cross_entropy(v.model(x), y)
    v.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    v.optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(v: Variant, device: torch.device, warmup: int, steps: int) -> float:
    """Images/s over ``steps`` timed steps (batch production included) after ``warmup`` steps."""
    it = v.stream()
    try:
        for _ in range(warmup):
            x, y = next(it)
            train_step(v, x, y, device)
        sync(device)
        seen = 0
        start = time.perf_counter()
        for _ in range(steps):
            x, y = next(it)
            train_step(v, x, y, device)
            seen += len(y)
        sync(device)
        elapsed = time.perf_counter() - start
    finally:
        it.close()  # drops the DataLoader iterator: its workers stop before the next variant
        del it
        gc.collect()
    return seen / elapsed


# ---- reporting ----------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda: bf16 autocast for cilkit)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (PyCIL: 8)")
    p.add_argument("--num-images", type=int, default=5120, help="training images used")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per variant and round")
    p.add_argument("--steps", type=int, default=40, help="timed steps per variant and round")
    p.add_argument("--repeats", type=int, default=3, help="rounds of alternating variants")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument(
        "--variants", default="cilkit,pycil", help=f"comma list of {', '.join(VARIANTS)}"
    )
    p.add_argument("--no-amp", action="store_true", help="fp32 for cilkit on CUDA too")
    p.add_argument(
        "--data-root",
        default=os.environ.get(DATA_ENV) or str(DEFAULT_DATA_ROOT),
        metavar="DIR",
        help=(
            f"folder holding cifar-10-batches-py/, or {JPEG_ARCHIVE} and {JPEG_CONVERTER}; "
            f"default: ${DATA_ENV}, else shared/data next to the repository"
        ),
    )
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE / "cifar10"))
    p.add_argument("--synthetic", action="store_true", help="random uint8 images, no dataset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results here")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        p.error(f"--variants: unknown {bad}; known: {', '.join(VARIANTS)}")
    args.variants = names
    return args


def main(argv: list[str] | None = None) -> dict:
    """Measure and report; torch's thread count and cuDNN setting are restored afterwards, so
    a caller in the same process (``gpu.py``) trains with its own."""
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        return _measure(parse_args(argv))
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


def _measure(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but CUDA is not available")
    cores = available_cores()
    threads = args.threads or cores
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both variants
    import torchvision

    data = load_data(args)
    num_classes = len(data.class_names)
    amp = torch.bfloat16 if device.type == "cuda" and not args.no_amp else None
    where = "cuda" if device.type == "cuda" else "cpu"

    variants: list[Variant] = []
    for name in args.variants:
        if name == "pycil":
            stream = pycil_stream(data, device, args.batch_size, args.seed, args.num_workers)
            model, opt = build_model(num_classes, device, False, args.seed)
            path = f"PIL + torchvision per image, DataLoader(workers={args.num_workers})"
            variants.append(Variant(name, path, "contiguous", "fp32", stream, model, opt, None, []))
        else:
            cl = name != "cilkit-nchw"
            stream = cilkit_stream(data, device, args.batch_size, args.seed, cl)
            path = f"DeviceSplit.train_batches (uint8 on {where}, batched aug)"
            if name == "ceiling":
                stream, path = repeat_one(stream), "one batch, made once and reused (no data path)"
            model, opt = build_model(num_classes, device, cl, args.seed)
            if name == "cilkit-compiled":
                model.backbone.compile()  # as engine.compile: in place
            layout = "channels_last" if cl else "contiguous"
            v_amp = torch.bfloat16 if name == "cilkit-bf16" else amp
            prec = "bf16 autocast" if v_amp is not None else "fp32"
            variants.append(Variant(name, path, layout, prec, stream, model, opt, v_amp, []))

    header = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": f"{device.type} ({device_name(device)})",
        "cpu_cores": cores,
        "torch_threads": threads,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "images": len(data.labels),
        "data": data.source,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "repeats": args.repeats,
        "load_avg_1m_start": _load_avg(),
    }
    width = max(len(k) for k in header)
    for k, v in header.items():
        print(f"{k:<{width}}  {v}")
    print()

    for r in range(args.repeats):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            rate = measure(v, device, args.warmup, args.steps)
            v.rates.append(rate)
            print(f"round {r + 1}/{args.repeats}  {v.name:<12} {rate:9.1f} images/s", flush=True)
    print()

    header["load_avg_1m_end"] = _load_avg()
    print(
        f"1-minute load average: {header['load_avg_1m_start']} at start, "
        f"{header['load_avg_1m_end']} at end ({cores} cores; other load slows every variant)"
    )
    medians = {v.name: statistics.median(v.rates) for v in variants}
    bests = {v.name: max(v.rates) for v in variants}
    rows = [("variant", "data path", "layout", "precision", "images/s per round", "median", "best")]
    for v in variants:
        per_round = " ".join(f"{x:.1f}" for x in v.rates)
        med, best = f"{medians[v.name]:.1f}", f"{bests[v.name]:.1f}"
        rows.append((v.name, v.data_path, v.layout, v.precision, per_round, med, best))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    # The ratio of medians is the headline; the median of the per-round ratios (each round's
    # variants ran back to back, under similar load) and the ratio of the best rounds are
    # printed next to it so a burst of load on a shared machine shows as a disagreement.
    ratios: dict[str, float] = {}
    paired: dict[str, list[float]] = {}
    ratios_best: dict[str, float] = {}
    base = next((v for v in variants if v.name == "pycil"), None)
    print()
    for v in variants:
        if base is None or v is base:
            continue
        key = f"{v.name}/pycil"
        ratios[key] = medians[v.name] / medians["pycil"]
        paired[key] = [a / b for a, b in zip(v.rates, base.rates, strict=True)]
        ratios_best[key] = bests[v.name] / bests["pycil"]
        per_round = " ".join(f"{x:.2f}" for x in paired[key])
        print(f"ratio of medians {key}: {ratios[key]:.2f}x")
        print(
            f"  (per round: {per_round}; median of those {statistics.median(paired[key]):.2f}x; "
            f"ratio of best rounds {ratios_best[key]:.2f}x)"
        )

    result = {
        **header,
        "variants": {
            v.name: {
                "data_path": v.data_path,
                "layout": v.layout,
                "precision": v.precision,
                "images_per_s": v.rates,
                "median_images_per_s": medians[v.name],
                "best_images_per_s": bests[v.name],
            }
            for v in variants
        },
        "ratios_of_medians": ratios,
        "ratios_per_round": paired,
        "ratios_of_best_rounds": ratios_best,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
