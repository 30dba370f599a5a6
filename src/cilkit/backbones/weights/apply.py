"""Applying mapped weights: the backbone's tensors now, the classifier's rows at the head's first
growth (``cilkit run``) or into the classes it has (``cilkit tune --weights``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cilkit.backbones.heads import ExpandableLinear
from cilkit.backbones.weights.files import WeightsError, read_state_dict
from cilkit.backbones.weights.mapping import LAYOUTS, MappedWeights, map_state_dict

logger = logging.getLogger(__name__)


def load_backbone_weights(
    backbone: nn.Module, path: str | Path, strict: bool = True, what: str = "the backbone"
) -> MappedWeights:
    """Read ``path``, map it onto ``backbone`` and copy the tensors that fit into it.

    Args:
        backbone: the cilkit backbone.
        path: a ``.safetensors`` or PyTorch state dict.
        strict: refuse a partial load (missing or shape-mismatched backbone keys).
        what: how the messages name the backbone.

    Raises:
        WeightsError: the file cannot be read, or (``strict``) would load only partly.
    """
    mapped = map_state_dict(read_state_dict(path), backbone, str(path))
    if not mapped.backbone:
        raise WeightsError(
            f"{path}: no tensor matches {what} (tried layouts {', '.join(LAYOUTS)} with prefixes "
            f"module./convnet./backbone./encoder.); {mapped.problems()}"
        )
    if strict and not mapped.complete:
        hint = ""
        if any(k == "stem.0.weight" for k, _, _ in mapped.mismatched):
            hint = " (another stem or channel count? see cilkit show-config of the backbone)"
        raise WeightsError(
            f"{path} would load only partly into {what}: {mapped.problems()}{hint}; set "
            "backbone.weights_strict=false (import-weights: --allow-partial) to start anyway"
        )
    with torch.no_grad():
        backbone.load_state_dict(mapped.backbone, strict=False)
    return mapped


def head_rows(
    mapped: MappedWeights, head: nn.Module, num_classes: int, class_order: Sequence[int]
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor] | None]:
    """A function giving the file's classifier rows (weight, bias) for the first ``k`` classes
    of the scenario's order, or None when the file's classifier does not fit (``mapped.head_note``
    says why)."""
    w, b = mapped.head_weight, mapped.head_bias
    in_features = getattr(head, "in_features", None)
    if w is None:
        mapped.head_note = (
            "the file has no classifier (fc/linear/classifier/head): head starts fresh"
        )
    elif not isinstance(head, ExpandableLinear) or not head.has_bias:
        mapped.head_note = (
            f"head skipped: the {type(head).__name__} head is not a linear classifier"
        )
    elif b is None or w.dim() != 2 or b.shape != (w.shape[0],):
        mapped.head_note = "head skipped: the file's classifier has no matching bias"
    elif w.shape != (num_classes, in_features):
        mapped.head_note = (
            f"head skipped: the file's classifier is {list(w.shape)}, the dataset needs "
            f"[{num_classes}, {in_features}] (one row per class)"
        )
    else:
        mapped.head_note = "head rows loaded (reordered into the scenario's class order)"
        mapped.head_loaded = True
        index = torch.as_tensor(list(class_order), dtype=torch.long)
        return lambda k: (w[index[:k]].clone(), b[index[:k]].clone())
    return lambda k: None


def preload_head(head: nn.Module, rows: Callable[[int], Any]) -> None:
    """Make ``head``'s first growth take the file's rows instead of a fresh initialisation.

    Only a growth from zero classes uses them (a head restored from a checkpoint already has
    rows, so resuming never applies them twice); the hook removes itself after that growth.
    """

    def init_rows(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        del head._init_rows  # one-shot: later growths initialise as usual
        found = rows(weight.shape[0]) if head.num_classes == 0 else None
        if found is None or bias is None:
            head._init_rows(weight, bias)
            return
        weight.copy_(found[0].to(weight))
        bias.copy_(found[1].to(bias))

    head._init_rows = init_rows


def fill_head(head: nn.Module, rows: Callable[[int], Any]) -> bool:
    """Copy the file's rows into every class ``head`` has now; False when they do not fit."""
    found = rows(head.num_classes)
    if found is None:
        return False
    with torch.no_grad():
        for chunk, bias, s in zip(head.weights, head.biases, head.chunk_slices(), strict=True):
            chunk.copy_(found[0][s].to(chunk))
            bias.copy_(found[1][s].to(bias))
    return True


def load_network_weights(
    network: nn.Module,
    path: str | Path,
    strict: bool,
    num_classes: int,
    class_order: Sequence[int],
) -> MappedWeights:
    """``backbone.weights``: load the backbone now and the classifier rows at the head's first
    growth (or now, into the classes it already has), and log a one-line report."""
    mapped = load_backbone_weights(network.backbone, path, strict, f"backbone '{_name(network)}'")
    rows = head_rows(mapped, network.head, num_classes, class_order)
    if network.head.num_classes:
        fill_head(network.head, rows)
    else:
        preload_head(network.head, rows)
    logger.info(mapped.summary())
    return mapped


def _name(network: nn.Module) -> str:
    return type(network.backbone).__name__
