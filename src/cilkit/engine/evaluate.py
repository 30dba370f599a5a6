"""Evaluation after a task: every classifier of the learner on every class seen so far."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cilkit.buffers.features import FeatureCache
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
    queries: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Top-1 and top-5 predictions of each classifier (``cnn``, ``nme``, ...) and the targets;
    with ``queries`` (one row per sample of ``indices``, in order), ``learner.predict_queried``
    gets each batch's rows beside its images."""
    was_training = learner.training
    learner.eval()
    top1: dict[str, list[torch.Tensor]] = {}
    top5: dict[str, list[torch.Tensor]] = {}
    targets = []
    done = 0
    try:
        for batch in split.eval_batches(indices, batch_size):
            with autocast(split.device, amp_dtype):
                if queries is None:
                    scores = learner.predict(batch.x)
                else:
                    rows = queries[done : done + len(batch.y)]
                    scores = learner.predict_queried(batch.x, rows)
            done += len(batch.y)
            _collect(scores, top1, top5)
            targets.append(batch.y)
    finally:
        learner.train(was_training)
    return _cat(top1), _cat(top5), torch.cat(targets).cpu()


class TestFeatures:
    """The test images' features under a learner's frozen evaluation extractor, per task.

    The features are computed per task block (the test images of one task, in batches of the
    evaluation batch size) whether they are cached or not, so a run with the cache and one
    without it (``engine.feature_cache: false``) do the same computations on the same batches
    and give bit-identical results. With the cache, a block is computed once while the
    extractor's parameters and buffers keep their values (a fingerprint check, not a promise:
    :class:`~cilkit.buffers.features.FeatureCache`) and the extractor has no trainable
    parameter; an extractor that still trains is recomputed at every evaluation. An extractor
    given as a sequence of modules (the branches of an ensemble that grows by one per task,
    EASE's adapters) is cached per module, so only a new branch runs over the old tasks' images.

    Args:
        enabled: keep features between evaluations.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.caches: list[FeatureCache] = []

    @property
    def computed(self) -> int:
        """Test images whose features were computed so far (each forward pass of each
        extractor counted)."""
        return sum(cache.computed for cache in self.caches)

    def features(
        self,
        extractor: nn.Module | Sequence[nn.Module],
        split: DeviceSplit,
        blocks: list[torch.Tensor],
        batch_size: int,
        amp_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """The features of every sample of ``blocks`` (concatenated in block order); for a
        sequence of extractors (the branches of a growing ensemble), each one's features side
        by side, each kept in a cache of its own."""
        parts = [extractor] if isinstance(extractor, nn.Module) else list(extractor)
        while len(self.caches) < len(parts):
            self.caches.append(FeatureCache())
        for module, cache in zip(parts, self.caches, strict=False):
            if not self.enabled or any(p.requires_grad for p in module.parameters()):
                cache.clear()  # the blocks are disjoint: each is computed once, afresh
        rows = [
            torch.cat(
                [
                    cache.get(split, module, module, block, batch_size, amp=amp_dtype)
                    for module, cache in zip(parts, self.caches, strict=False)
                ],
                dim=1,
            )
            for block in blocks
        ]
        return torch.cat(rows)


def predict_seen(
    learner: Any,
    split: DeviceSplit,
    scenario: Any,
    task_id: int,
    batch_size: int,
    amp_dtype: torch.dtype | None,
    cache: TestFeatures,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Predictions on the test samples of tasks ``0..task_id`` of ``scenario``: through the
    learner's evaluation extractor and ``cache``, task block by task block, where it declares
    one (:meth:`~cilkit.learners.base.Learner.evaluation_extractor`); else on the images, with
    its query model's features from ``cache`` beside them where it declares one
    (:meth:`~cilkit.learners.base.Learner.query_extractor`: a prompt method's frozen query
    model), else
    :func:`predict_split` in dataset order."""
    extractor = learner.evaluation_extractor()
    blocks = [scenario[k].indices for k in range(task_id + 1)]
    if extractor is None:
        query = learner.query_extractor()
        if query is None:
            seen = scenario[: task_id + 1].indices
            return predict_split(learner, split, seen, batch_size, amp_dtype)
        queries = cache.features(query, split, blocks, batch_size, amp_dtype)
        return predict_split(learner, split, torch.cat(blocks), batch_size, amp_dtype, queries)
    return predict_features_split(learner, extractor, cache, split, blocks, batch_size, amp_dtype)


@torch.no_grad()
def predict_features_split(
    learner: torch.nn.Module,
    extractor: torch.nn.Module,
    cache: TestFeatures,
    split: DeviceSplit,
    blocks: list[torch.Tensor],
    batch_size: int,
    amp_dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """:func:`predict_split` for a learner that classifies ``extractor``'s features
    (``learner.predict_features``), over the samples of ``blocks`` (one per task seen)."""
    was_training = learner.training
    learner.eval()
    top1: dict[str, list[torch.Tensor]] = {}
    top5: dict[str, list[torch.Tensor]] = {}
    try:
        features = cache.features(extractor, split, blocks, batch_size, amp_dtype)
        for chunk in torch.split(features, batch_size):
            with autocast(split.device, amp_dtype):
                scores = learner.predict_features(chunk)
            _collect(scores, top1, top5)
    finally:
        learner.train(was_training)
    targets = split.targets_cpu[torch.cat(blocks).cpu()]
    return _cat(top1), _cat(top5), targets


def _collect(scores: dict[str, torch.Tensor], top1: dict, top5: dict) -> None:
    for name, s in scores.items():
        best = s.float().topk(min(5, s.shape[1]), dim=1).indices
        top1.setdefault(name, []).append(best[:, 0])
        top5.setdefault(name, []).append(best)


def _cat(parts: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {n: torch.cat(v).cpu() for n, v in parts.items()}


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
