"""Classifier heads that grow, registered by name (``backbone.head``): ``linear`` and ``cosine``.

Each head keeps one weight ``Parameter`` of shape ``(num_classes, in_features)`` (and one bias
``Parameter`` where it has a bias) and follows one growth protocol (:class:`Head`):
``expand`` appends classes, ``expand_inputs`` appends input features (DER's new extractor),
``scale_rows`` and ``reset_rows`` rescale or re-initialise classes (LWS, cRT). Growing rebuilds
the parameters with the old values copied exactly, so an optimiser built before must be rebuilt
after. Loading a state dict resizes the head to the shape stored in it, so a checkpoint can be
loaded into a freshly built network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.config.schema import BackboneConfig
from cilkit.registry import Registry


class Head(nn.Module):
    """The growth protocol every head follows; subclasses say how new rows are initialised and
    how features become logits.

    The rows are kept in chunks, one per :meth:`expand` (one per task): ``weights[i]`` (and
    ``biases[i]``) hold the classes the ``i``-th call added. A learner freezes earlier tasks'
    classes by switching off their chunks' ``requires_grad`` (LUCIR), or trains only the newest
    chunk (Liu et al.'s LWS stage). ``weight`` and ``bias`` are the chunks concatenated.
    """

    def __init__(self, in_features: int, bias: bool) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        self.in_features = in_features
        self.has_bias = bias
        # Per-class output scale (1 unless a rebalancing stage such as LWS learned one).
        self.register_buffer("class_scale", torch.ones(0))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()

    @property
    def num_classes(self) -> int:
        """Number of output classes (rows over all chunks)."""
        return sum(w.shape[0] for w in self.weights)

    @property
    def weight(self) -> torch.Tensor:
        """All classes' weight rows ``(num_classes, in_features)``."""
        if not len(self.weights):
            return self.class_scale.new_zeros(0, self.in_features)
        return self.weights[0] if len(self.weights) == 1 else torch.cat(list(self.weights))

    @property
    def bias(self) -> torch.Tensor | None:
        """All classes' biases, or None for a head without bias."""
        if not self.has_bias:
            return None
        if not len(self.biases):
            return self.class_scale.new_zeros(0)
        return self.biases[0] if len(self.biases) == 1 else torch.cat(list(self.biases))

    def chunk_slices(self) -> list[slice]:
        """The class range of each chunk."""
        out, start = [], 0
        for w in self.weights:
            out.append(slice(start, start + w.shape[0]))
            start += w.shape[0]
        return out

    def _init_rows(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        raise NotImplementedError

    def _append(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weights.append(nn.Parameter(weight))
        if bias is not None:
            self.biases.append(nn.Parameter(bias))
        rows = self.num_classes
        scale = self.class_scale
        self.class_scale = torch.cat([scale, scale.new_ones(rows - len(scale))])

    @torch.no_grad()
    def expand(self, num_new: int) -> None:
        """Append a chunk of ``num_new`` freshly initialised classes, keeping the old rows.

        Args:
            num_new: number of classes to add (0 is a no-op).
        """
        if num_new < 0:
            raise ValueError(f"num_new must be >= 0, got {num_new}")
        if num_new == 0:
            return
        new_w = self.class_scale.new_empty(num_new, self.in_features)
        new_b = self.class_scale.new_empty(num_new) if self.has_bias else None
        self._init_rows(new_w, new_b)
        self._append(new_w, new_b)

    @torch.no_grad()
    def expand_inputs(self, num_new: int) -> None:
        """Append ``num_new`` input features: every row gets new columns initialised as a head of
        the new width would be (DER's head over a new extractor), the old columns kept exactly.

        Args:
            num_new: number of input features to add (0 is a no-op).
        """
        if num_new < 0:
            raise ValueError(f"num_new must be >= 0, got {num_new}")
        if num_new == 0:
            return
        old_in = self.in_features
        self.in_features += num_new
        for i, w in enumerate(self.weights):
            wider = w.new_empty(w.shape[0], self.in_features)
            self._init_rows(wider, None)
            wider[:, :old_in] = w
            self.weights[i] = nn.Parameter(wider, requires_grad=w.requires_grad)

    @torch.no_grad()
    def scale_weights_(self, scale: torch.Tensor, bias: bool = True) -> None:
        """Multiply each class's weight row (and bias, if ``bias``) by ``scale[class]`` in place
        (WA's weight aligning; folding a learned weight scaling into a linear head)."""
        for i, rows in enumerate(self.chunk_slices()):
            factor = scale[rows].to(self.weights[i])
            self.weights[i].mul_(factor[:, None])
            if bias and self.has_bias:
                self.biases[i].mul_(factor)

    @torch.no_grad()
    def clamp_weights_(self, min: float) -> None:  # noqa: A002  (torch's name)
        """Clamp every weight from below in place (WA's non-negative weight clipping)."""
        for w in self.weights:
            w.clamp_(min=min)

    @torch.no_grad()
    def scale_rows(self, scale: torch.Tensor) -> None:
        """Multiply each class's output by ``scale`` (one value per class), e.g. to fold a
        learned weight scaling into the head."""
        self.class_scale.mul_(scale.to(self.class_scale))

    @torch.no_grad()
    def reset_rows(self) -> None:
        """Re-initialise every class and its output scale (classifier re-training)."""
        weight = self.class_scale.new_empty(self.num_classes, self.in_features)
        bias = self.class_scale.new_empty(self.num_classes) if self.has_bias else None
        self._init_rows(weight, bias)  # one draw for all classes, as a fresh head of this size
        for i, rows in enumerate(self.chunk_slices()):
            self.weights[i].copy_(weight[rows])
            if bias is not None:
                self.biases[i].copy_(bias[rows])
        self.class_scale.fill_(1.0)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        shapes = []
        while isinstance(state_dict.get(f"{prefix}weights.{len(shapes)}"), torch.Tensor):
            shapes.append(tuple(state_dict[f"{prefix}weights.{len(shapes)}"].shape))
        if shapes and shapes != [tuple(w.shape) for w in self.weights]:
            self.in_features = shapes[0][1]
            self.weights = nn.ParameterList()
            self.biases = nn.ParameterList()
            self.class_scale = self.class_scale.new_ones(0)
            for rows, cols in shapes:
                self._append(
                    self.class_scale.new_zeros(rows, cols),
                    self.class_scale.new_zeros(rows) if self.has_bias else None,
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        chunks = [w.shape[0] for w in self.weights]
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"chunks={chunks}, bias={self.has_bias}"
        )


class ExpandableLinear(Head):
    """A linear classifier ``x @ W.T + b`` that grows by whole classes.

    New rows are initialised like :class:`torch.nn.Linear` (uniform in
    ``+-1/sqrt(in_features)``). With 0 classes the output is ``(B, 0)``.

    Args:
        in_features: feature width.
        bias: whether to learn a bias per class.
    """

    def __init__(self, in_features: int, bias: bool = True) -> None:
        super().__init__(in_features, bias)

    def _init_rows(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # what nn.Linear does
        if bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight, self.bias) * self.class_scale


class CosineLinear(Head):
    """A cosine classifier ``sigma * <x / |x|, w / |w|>`` that grows by whole classes (LUCIR).

    New rows are uniform in ``+-1/sqrt(in_features)``. ``sigma`` is a learnable scale initialised
    to ``scale`` (LUCIR: 1), or the constant ``scale`` with ``learn_scale=False`` (Cao et al.'s
    ``NormedLinear`` for LDAM is ``scale=1``: plain cosines). There is no bias.

    Args:
        in_features: feature width.
        learn_scale: learn ``sigma``; otherwise the cosines are multiplied by ``scale``.
        scale: the initial or fixed value of ``sigma``.
    """

    sigma: nn.Parameter | None

    def __init__(self, in_features: int, learn_scale: bool = True, scale: float = 1.0) -> None:
        super().__init__(in_features, bias=False)
        self.fixed_scale = float(scale)
        if learn_scale:
            self.sigma = nn.Parameter(torch.full((), float(scale)))
        else:
            self.register_parameter("sigma", None)

    def _init_rows(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(weight, -bound, bound)

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``(B, num_classes)`` before the scale."""
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.cosine(features) * self.class_scale
        if self.sigma is not None:
            return self.sigma * out
        return out if self.fixed_scale == 1.0 else self.fixed_scale * out

    def extra_repr(self) -> str:
        scale = "learned" if self.sigma is not None else f"fixed {self.fixed_scale:g}"
        return f"{super().extra_repr()}, scale={scale}"


HeadBuilder = Callable[[BackboneConfig, int], Head]
"""``fn(backbone_cfg, in_features) -> Head`` (with no classes yet)."""

HEADS: Registry[HeadBuilder] = Registry("head")
register_head = HEADS.register


@register_head("linear")
def linear_head(cfg: BackboneConfig, in_features: int) -> Head:
    """Linear classifier with a bias (iCaRL, WA, DER, BiC)."""
    return ExpandableLinear(in_features)


@register_head("cosine")
def cosine_head(cfg: BackboneConfig, in_features: int) -> Head:
    """Cosine-normalised classifier, learned or fixed scale (LUCIR; LDAM with a fixed scale)."""
    return CosineLinear(in_features, cfg.learn_cosine_scale, cfg.cosine_scale)


def create_head(name: str, cfg: BackboneConfig, in_features: int) -> Head:
    """Build the head registered as ``name`` over ``in_features`` features."""
    return HEADS.get(name).obj(cfg, in_features)
