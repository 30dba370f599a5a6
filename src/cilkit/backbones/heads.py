"""Classifier heads that grow by whole classes.

Each head keeps one weight ``Parameter`` of shape ``(num_classes, in_features)`` (and one bias
``Parameter`` where it has a bias). :meth:`expand` rebuilds these parameters with the old rows
copied exactly and new rows appended, so an optimiser built before an ``expand`` must be rebuilt
after it.
Loading a state dict resizes the head to the number of classes stored in it, so a checkpoint can be
loaded into a freshly built network.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _ExpandableHead(nn.Module):
    """Shared growth logic: subclasses say how new weight (and bias) rows are initialised."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(self, in_features: int, bias: bool) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        self.in_features = in_features
        # Per-class output scale (1 unless a rebalancing stage such as LWS learned one).
        self.register_buffer("class_scale", torch.ones(0))
        self.weight = nn.Parameter(torch.empty(0, in_features))
        if bias:
            self.bias = nn.Parameter(torch.empty(0))
        else:
            self.register_parameter("bias", None)

    @property
    def num_classes(self) -> int:
        """Number of output classes (rows of the weight)."""
        return self.weight.shape[0]

    def _init_rows(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        raise NotImplementedError

    def _set_rows(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        rows = weight.shape[0]
        scale = self.class_scale[:rows]
        self.class_scale = torch.cat([scale, scale.new_ones(rows - len(scale))])
        requires_grad = self.weight.requires_grad
        self.weight = nn.Parameter(weight, requires_grad=requires_grad)
        if bias is not None:
            self.bias = nn.Parameter(bias, requires_grad=requires_grad)

    @torch.no_grad()
    def expand(self, num_new: int) -> None:
        """Append ``num_new`` freshly initialised classes, keeping the old rows exactly.

        Args:
            num_new: number of classes to add (0 is a no-op).
        """
        if num_new < 0:
            raise ValueError(f"num_new must be >= 0, got {num_new}")
        if num_new == 0:
            return
        old_w = self.weight.detach()
        new_w = old_w.new_empty(num_new, self.in_features)
        new_b = None if self.bias is None else old_w.new_empty(num_new)
        self._init_rows(new_w, new_b)
        bias = None
        if self.bias is not None and new_b is not None:
            bias = torch.cat([self.bias.detach(), new_b])
        self._set_rows(torch.cat([old_w, new_w]), bias)

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
        stored = state_dict.get(prefix + "weight")
        if (
            isinstance(stored, torch.Tensor)
            and stored.ndim == 2
            and stored.shape[1] == self.in_features
            and stored.shape[0] != self.num_classes
        ):
            rows = stored.shape[0]
            w = self.weight
            bias = None if self.bias is None else w.new_zeros(rows)
            self._set_rows(w.new_zeros(rows, self.in_features), bias)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"bias={self.bias is not None}"
        )


class ExpandableLinear(_ExpandableHead):
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


class CosineLinear(_ExpandableHead):
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
