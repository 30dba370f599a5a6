"""Classifier heads that grow, registered by name (``backbone.head``): ``linear``, ``cosine`` and
``local_similarity`` (PODNet's several proxies per class).

Each head keeps its weight rows in ``Parameter`` chunks, ``rows_per_class`` rows per class (one
but for PODNet's proxies), and one bias ``Parameter`` per chunk where it has a bias, and follows
one growth protocol (:class:`Head`):
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

    A class owns ``rows_per_class`` consecutive weight rows (PODNet's proxies; 1 otherwise):
    ``num_classes``, ``chunk_slices``, ``expand`` and the per-class scales count classes, and
    class ``c``'s rows are ``weight[c * rows_per_class : (c + 1) * rows_per_class]``. A head with
    several rows per class has no bias.
    """

    def __init__(self, in_features: int, bias: bool, rows_per_class: int = 1) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        if rows_per_class < 1 or (bias and rows_per_class > 1):
            raise ValueError(f"rows_per_class must be >= 1 (1 with a bias), got {rows_per_class}")
        self.in_features = in_features
        self.has_bias = bias
        self.rows_per_class = rows_per_class
        # Per-class output scale (1 unless a rebalancing stage such as LWS learned one).
        self.register_buffer("class_scale", torch.ones(0))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()

    @property
    def num_classes(self) -> int:
        """Number of output classes (rows over all chunks / rows per class)."""
        return sum(w.shape[0] for w in self.weights) // self.rows_per_class

    @property
    def weight(self) -> torch.Tensor:
        """All classes' weight rows ``(num_classes * rows_per_class, in_features)``."""
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
        r = self.rows_per_class
        return [slice(rows.start // r, rows.stop // r) for rows in self._row_slices()]

    def _row_slices(self) -> list[slice]:
        """The weight-row range of each chunk."""
        out, start = [], 0
        for w in self.weights:
            out.append(slice(start, start + w.shape[0]))
            start += w.shape[0]
        return out

    def _init_rows(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        raise NotImplementedError

    def _append(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        if weight.shape[0] % self.rows_per_class:
            raise ValueError(
                f"a chunk of {weight.shape[0]} rows is not whole classes of "
                f"{self.rows_per_class} rows"
            )
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
        new_w = self.class_scale.new_empty(num_new * self.rows_per_class, self.in_features)
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
        for i, classes in enumerate(self.chunk_slices()):
            factor = scale[classes].to(self.weights[i])
            self.weights[i].mul_(factor.repeat_interleave(self.rows_per_class)[:, None])
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
        rows = self.num_classes * self.rows_per_class
        weight = self.class_scale.new_empty(rows, self.in_features)
        bias = self.class_scale.new_empty(self.num_classes) if self.has_bias else None
        self._init_rows(weight, bias)  # one draw for all classes, as a fresh head of this size
        for i, (chunk, classes) in enumerate(
            zip(self._row_slices(), self.chunk_slices(), strict=True)
        ):
            self.weights[i].copy_(weight[chunk])
            if bias is not None:
                self.biases[i].copy_(bias[classes])
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
        chunks = [w.shape[0] // self.rows_per_class for w in self.weights]
        rows = f", rows_per_class={self.rows_per_class}" if self.rows_per_class > 1 else ""
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"chunks={chunks}, bias={self.has_bias}{rows}"
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


class LocalSimilarity(Head):
    """PODNet's local similarity classifier: ``proxies`` weight rows per class (Douillard et al.,
    ECCV 2020), with the maths of the authors' ``CosineClassifier``
    (arthurdouillard/incremental_learning.pytorch, ``distance: neg_stable_cosine_distance``,
    ``merging: softmax``, ``gamma: 1``) and their ``learned_scaling`` post-processor.

    Each proxy's similarity to a feature is the negative squared distance of the normalised
    vectors, ``s_k = -|x/|x| - w_k/|w_k||^2 = 2 cos_k - 2`` (the paper writes the cosine; the
    authors' code uses this distance, which doubles the cosine's range and shifts it to [-4, 0]).
    A class's similarity is the softmax-weighted sum over its proxies,
    ``y_c = sum_k softmax_k(s) s_k``, and the output is ``sigma * y_c`` with ``sigma`` learned
    (initial ``scale``; the authors' ``initial_value: 1.0``) or the fixed ``scale``. With one
    proxy per class it is ``sigma * (2 cos - 2)``: a cosine head of scale ``2 sigma``, shifted.
    New rows are ``kaiming_normal`` (std ``1/sqrt(in_features)``), as the authors' first task.

    Args:
        in_features: feature width.
        proxies: weight rows (proxies) per class.
        learn_scale: learn ``sigma``; otherwise the similarities are multiplied by ``scale``.
        scale: the initial or fixed value of ``sigma``.
    """

    sigma: nn.Parameter | None

    def __init__(
        self, in_features: int, proxies: int = 10, learn_scale: bool = True, scale: float = 1.0
    ) -> None:
        super().__init__(in_features, bias=False, rows_per_class=proxies)
        self.fixed_scale = float(scale)
        if learn_scale:
            self.sigma = nn.Parameter(torch.full((), float(scale)))
        else:
            self.register_parameter("sigma", None)

    def set_proxies(self, proxies: int) -> None:
        """Use ``proxies`` rows per class; only while the head has no class."""
        if len(self.weights) or proxies < 1:
            raise ValueError(f"cannot use {proxies} proxies per class in {self}")
        self.rows_per_class = proxies

    def _init_rows(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        nn.init.kaiming_normal_(weight, nonlinearity="linear")

    def scale(self) -> torch.Tensor | float:
        """``sigma``: the learned scale, or the fixed one."""
        return self.sigma if self.sigma is not None else self.fixed_scale

    def proxy_similarity(self, features: torch.Tensor) -> torch.Tensor:
        """``2 cos - 2`` of every feature and proxy ``(B, num_classes * proxies)``."""
        cos = F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))
        return (2 * cos - 2).clamp(max=0.0)  # the authors clamp the squared distance at 0

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """Each class's proxies merged by a softmax over them ``(B, num_classes)``."""
        sims = self.proxy_similarity(features).unflatten(1, (self.num_classes, self.rows_per_class))
        return (sims.softmax(dim=2) * sims).sum(dim=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale() * self.similarity(features) * self.class_scale

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


@register_head("local_similarity")
def local_similarity_head(cfg: BackboneConfig, in_features: int) -> Head:
    """PODNet's local similarity classifier: 10 proxies per class merged by a softmax, times a
    learned scale (``cosine_scale`` its initial value; fixed with ``learn_cosine_scale=false``)."""
    return LocalSimilarity(in_features, 10, cfg.learn_cosine_scale, cfg.cosine_scale)


def create_head(name: str, cfg: BackboneConfig, in_features: int) -> Head:
    """Build the head registered as ``name`` over ``in_features`` features."""
    return HEADS.get(name).obj(cfg, in_features)
