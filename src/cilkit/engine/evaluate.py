"""Evaluation after a task: every classifier of the learner on every class seen so far."""

from __future__ import annotations

from typing import Any

import torch

from cilkit.engine.data import DeviceSplit
from cilkit.engine.runtime import autocast
from cilkit.metrics import accuracy, accuracy_per_task, long_tail_metrics, old_new_accuracy
from cilkit.scenarios import TaskSet


@torch.no_grad()
def predict_split(
    learner: torch.nn.Module,
    split: DeviceSplit,
    indices: torch.Tensor,
    batch_size: int,
    amp_dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Top-1 and top-5 predictions of each classifier (``cnn``, ``nme``, ...) and the targets."""
    was_training = learner.training
    learner.eval()
    top1: dict[str, list[torch.Tensor]] = {}
    top5: dict[str, list[torch.Tensor]] = {}
    targets = []
    try:
        for batch in split.eval_batches(indices, batch_size):
            with autocast(split.device, amp_dtype):
                scores = learner.predict(batch.x)
            for name, s in scores.items():
                k = min(5, s.shape[1])
                best = s.float().topk(k, dim=1).indices
                top1.setdefault(name, []).append(best[:, 0])
                top5.setdefault(name, []).append(best)
            targets.append(batch.y)
    finally:
        learner.train(was_training)
    cat = {n: torch.cat(v).cpu() for n, v in top1.items()}
    cat5 = {n: torch.cat(v).cpu() for n, v in top5.items()}
    return cat, cat5, torch.cat(targets).cpu()


def task_metrics(
    top1: dict[str, torch.Tensor],
    top5: dict[str, torch.Tensor],
    targets: torch.Tensor,
    seen: TaskSet,
    train_counts: torch.Tensor | None = None,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> dict[str, Any]:
    """The metrics.jsonl fields of one task for every classifier (``cnn`` unprefixed, the
    others prefixed by name, see :func:`cilkit.results.run_dir.classifier_keys`).

    With ``train_counts`` (training images of each seen class) the CNN classifier also gets the
    long-tail metrics: many/medium/few accuracy, GM/HM of per-class recalls, lowest recall.
    """
    out: dict[str, Any] = {"classifiers": list(top1)}
    num_old = seen.info.num_old_classes
    for name in top1:
        pred = top1[name]
        hit5 = (top5[name] == targets[:, None]).any(dim=1)
        old, new = old_new_accuracy(pred, targets, num_old)
        values = {
            "accuracy": accuracy(pred, targets),
            "accuracy_top5": 100.0 * hit5.float().mean().item() if len(targets) else None,
            "old_accuracy": old,
            "new_accuracy": new,
            "accuracy_per_task": accuracy_per_task(pred, targets, seen.task_classes()),
        }
        if name == "cnn":
            out.update(values)
        else:
            out[f"accuracy_{name}"] = values.pop("accuracy")
            out[f"accuracy_{name}_top5"] = values.pop("accuracy_top5")
            out.update({f"{name}_{k}": v for k, v in values.items()})
    if train_counts is not None and "cnn" in top1:
        out.update(
            long_tail_metrics(
                top1["cnn"],
                targets,
                train_counts.tolist(),
                seen.info.num_seen_classes,
                many_threshold,
                few_threshold,
            )
        )
    return out
