"""Pre-train a small ViT on the Tiny-ImageNet half, for the pre-trained-model evidence runs.

No pre-trained weights can be downloaded on our machines, so the PTM methods' evidence
(``docs/REPRODUCIBILITY.md``) uses a representation made here: a timm ``vit_tiny_patch16_224``
at 32 px with 8 px patches and 6 blocks, trained supervised on the 100 classes of the
Tiny-ImageNet half in ``../shared/data/`` (downscaled to 32 px), and saved as a safetensors
file in timm's own layout. A run then loads it exactly as a user's file::

    backbone: {name: timm, model: vit_tiny_patch16_224, pretrained_path: vit_tiny_tin100.safetensors,
               kwargs: {img_size: 32, patch_size: 8, depth: 6}}

The pixels are normalised with the model's timm data config (mean and std 0.5), so the data
path that a run resolves from the model is the one the weights were trained with. A
``.json`` beside the weights records the command, the epochs and the validation accuracy.

Usage::

    python benchmarks/pretrain_ptm.py --root /path/to/tiny-imagenet-100a/.. --out vit.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cilkit.config.schema import DataConfig
from cilkit.data.base import create_dataset
from cilkit.data.transforms import random_crop, random_flip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="data.root holding the Tiny-ImageNet folder")
    p.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import timm
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = create_dataset(
        DataConfig(name="tiny_imagenet", root=args.root, download=False, image_size=args.image_size)
    )
    train_x, train_y = data.train.images, data.train.labels
    test_x, test_y = data.test.images, data.test.labels
    kwargs = {"img_size": args.image_size, "patch_size": args.patch_size, "depth": args.depth}
    model = timm.create_model(args.model, num_classes=data.num_classes, **kwargs)
    cfg = timm.data.resolve_model_data_config(model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - mean) / std

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_y) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    for epoch in range(args.epochs):
        model.train()
        start, seen, loss_sum = time.perf_counter(), 0, 0.0
        order = torch.randperm(len(train_y), generator=gen)
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            x = random_flip(random_crop(train_x[idx], 4, gen), gen)
            loss = F.cross_entropy(model(prepare(x)), train_y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            correct = sum(
                int((model(prepare(test_x[i : i + 500])).argmax(1) == test_y[i : i + 500]).sum())
                for i in range(0, len(test_y), 500)
            )
        row = {
            "epoch": epoch + 1,
            "loss": round(loss_sum / seen, 4),
            "val_top1": round(100 * correct / len(test_y), 2),
            "seconds": round(time.perf_counter() - start, 1),
        }
        history.append(row)
        print(json.dumps(row), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out), metadata={"model": args.model, "kwargs": json.dumps(kwargs)})
    meta = {
        "command": "python "
        + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model,
        "kwargs": kwargs,
        "data": f"tiny_imagenet at {args.image_size}px ({len(train_y)} train, {len(test_y)} val)",
        "timm": timm.__version__,
        "torch": torch.__version__,
        "history": history,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
