"""The step of every stage that re-trains a classifier on frozen features (cRT, LUCIR's
class-balanced finetuning, EEIL's balanced finetuning): one home."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from cilkit.backbones import IncrementalNet
from cilkit.contract import Batch, StepOutput


def classifier_step(network: IncrementalNet, name: str) -> Callable[[Batch], StepOutput]:
    """Cross-entropy of ``network``'s head on its features, computed without gradient (the
    feature extractor does not train); the loss is logged as ``name``."""

    def step(batch: Batch) -> StepOutput:
        with torch.no_grad():
            features = network.forward_features(batch.x)
        logits = network.forward_head(features)
        loss = F.cross_entropy(logits.float(), batch.y)
        return StepOutput(loss, {name: loss.detach()}, logits)

    return step
