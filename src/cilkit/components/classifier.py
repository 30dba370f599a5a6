"""The step of every stage that re-trains a classifier on frozen features (cRT, LUCIR's
class-balanced finetuning, EEIL's balanced finetuning): one home."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cilkit.backbones import IncrementalNet
from cilkit.contract import Batch, StepOutput

logger = logging.getLogger(__name__)


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


def warn_if_scale_inverted(network: IncrementalNet, task_id: int) -> bool:
    """Log a warning when the head's learned scale ``sigma`` is not positive; returns whether
    it is. ``sigma * cos`` with ``sigma <= 0`` ranks the class of the *lowest* cosine first:
    the classifier is inverted. Nothing in LUCIR's or PODNet's code (the authors' or PyCIL's)
    keeps the scale positive; with their long schedules it grows, but in a short one it can
    cross zero (CIFAR-10, 3 epochs per task, sigma initialised to 1: -1.48 after task 2)."""
    sigma = getattr(network.head, "sigma", None)
    if sigma is None or float(sigma.detach()) > 0:
        return False
    logger.warning(
        "task %d: the head's learned scale sigma is %.3g <= 0, so the classifier ranks classes "
        "in reverse; train longer or start sigma higher (backbone.cosine_scale)",
        task_id,
        float(sigma.detach()),
    )
    return True
