"""Parameter-efficient modules on one timm ``VisionTransformer`` instance: AdaptFormer adapters,
SSF and VPT, as APER (Zhou et al., IJCV 2024), EASE and RanPAC tune a frozen pre-trained ViT.

A module holds only its own parameters and applies them through forward hooks registered on
the submodules of one model instance (never on timm's classes): the model's code, its state
dict keys and every other model in the process are untouched, and a model with a module
attached but disabled (:meth:`PEFTModule.disabled`) computes exactly what timm computes.
Defaults follow APER's code (zhoudw-zdw/RevisitingCIL ``convs/vision_transformer_adapter.py``,
``vision_transformer_ssf.py``, ``vpt.py``; LAMDA-PILOT's ``backbone/`` copies are the same):

- ``adapter``: AdaptFormer's parallel adapter on every block's MLP, ``x + mlp(norm2(x)) +
  s * up(dropout(relu(down(x))))`` where ``x`` is the block's stream after attention (not
  ``norm2(x)``); bottleneck 64 (``ffn_num``), scale ``s = 0.1``, dropout 0.1, no layer norm,
  ``down`` Kaiming-uniform (``a = sqrt(5)``) and everything else zero (the code's ``"lora"``
  init), so a new adapter is the identity.
- ``ssf``: a learnable per-channel ``x * scale + shift`` after the patch projection (and the
  patch norm, where there is one), after each block's ``norm1``, ``attn.qkv``, ``attn.proj``,
  ``norm2``, ``mlp.fc1``, ``mlp.fc2``, and after the final ``norm``; initialised
  ``scale ~ N(1, 0.02)``, ``shift ~ N(0, 0.02)`` as the code (``identity=True``: 1 and 0).
- ``vpt_shallow`` / ``vpt_deep``: 5 learnable prompt tokens, zero-initialised as the code,
  appended after the class and patch tokens before the first block and dropped after the last
  one (shallow), or appended before and dropped after every block, each block with its own
  (deep). The code appends them (VPT's paper prepends): attention does not see the order, and
  the class token stays first.

:func:`attach_peft` is the one call a learner makes: it checks the backbone, builds the module,
attaches it, freezes the ViT's own weights and registers the module as ``backbone.peft`` (so it
is saved with the learner and seen by the feature cache's fingerprint). The module's
``parameters()`` are what the optimiser trains. :class:`PEFTBranches` runs the ViT with and
without the module (or with each of several adapter sets) and concatenates the features.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.config.schema import FieldError
from cilkit.errors import ConfigError

PEFT_METHODS = ("adapter", "ssf", "vpt_shallow", "vpt_deep")
"""The methods :func:`create_peft` builds."""


@dataclass(frozen=True)
class PEFTOptions:
    """A learner config's choice of PEFT module and its sizes, as APER's code names them (a
    mixin: ``class APERConfig(PEFTOptions, SimpleCILConfig)``; call :meth:`check_peft` from the
    config's ``__post_init__``)."""

    peft: Literal["adapter", "ssf", "vpt_shallow", "vpt_deep"] = "adapter"
    """The module tuned (the code's ``aper_adapter``, ``aper_ssf``, ``aper_vpt`` with
    ``vpt_type`` shallow or deep; RanPAC's ``adapter``, ``ssf``, ``vpt``)."""
    adapter_bottleneck: int = 64
    """Adapter width (the code's ``ffn_num``)."""
    adapter_scale: float = 0.1
    """Adapter output scale (``ffn_adapter_scalar``)."""
    adapter_dropout: float = 0.1
    """Dropout inside the adapters while training."""
    prompt_tokens: int = 5
    """VPT prompt tokens (``prompt_token_num``), per block for ``vpt_deep``."""

    def check_peft(self) -> None:
        """Refuse out-of-range sizes (a :class:`FieldError` naming the field)."""
        if self.adapter_bottleneck < 1:
            raise FieldError("adapter_bottleneck", "must be >= 1")
        if not 0 <= self.adapter_dropout < 1:
            raise FieldError("adapter_dropout", "must be in [0, 1)")
        if self.prompt_tokens < 1:
            raise FieldError("prompt_tokens", "must be >= 1")

    def peft_options(self) -> dict[str, Any]:
        """:func:`create_peft`'s options from these fields."""
        return {
            "bottleneck": self.adapter_bottleneck,
            "scale": self.adapter_scale,
            "dropout": self.adapter_dropout,
            "prompts": self.prompt_tokens,
        }


class PEFTModule(nn.Module):
    """The parameters of one PEFT method and the hooks that apply them to one ViT.

    ``enabled`` is transient (not state): :meth:`disabled` runs the plain pre-trained model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self._handles: list[Any] = []

    def attach(self, model: nn.Module) -> PEFTModule:
        """Register the hooks on ``model``'s submodules (this instance only)."""
        raise NotImplementedError

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def num_sets(self) -> int:
        """Independent parameter sets (one but for :class:`ParallelAdapters`)."""
        return 1

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """The model without this module."""
        was, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = was

    def using(self, index: int | None) -> contextlib.AbstractContextManager:
        """Run parameter set ``index`` (None: none, the pre-trained model)."""
        return self.disabled() if index is None else contextlib.nullcontext()

    def parameter_set(self, index: int) -> nn.Module:
        """The module holding parameter set ``index`` (the whole module but for
        :class:`ParallelAdapters`)."""
        return self


class Adapter(nn.Module):
    """AdaptFormer's bottleneck ``scale * up(dropout(relu(down(x))))``, zero at initialisation."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale, self.dropout = float(scale), float(dropout)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.relu(self.down(x)), self.dropout, self.training)
        return self.up(h) * self.scale


class ParallelAdapters(PEFTModule):
    """One :class:`Adapter` per block beside its MLP; several ``sets`` of them (EASE: one per
    task), of which set ``active`` (default the newest) runs.

    The block's stream after attention (the input of ``norm2``) is taken by a pre-hook on
    ``norm2``; the adapter's output is added to the block's output by a hook on the block.
    A checkpoint with more sets than the module has grows it when loaded.
    """

    def __init__(
        self, dim: int, depth: int, bottleneck: int, scale: float, dropout: float, sets: int = 1
    ) -> None:
        super().__init__()
        self.dim, self.depth = dim, depth
        self.options = {"bottleneck": bottleneck, "scale": scale, "dropout": dropout}
        self.sets = nn.ModuleList()
        self.active = -1
        self._inputs: dict[int, torch.Tensor] = {}
        for _ in range(sets):
            self.add_set()

    @property
    def num_sets(self) -> int:
        return len(self.sets)

    def new_set(self) -> nn.ModuleList:
        """A fresh set of identity adapters, one per block (not added)."""
        return nn.ModuleList(Adapter(self.dim, **self.options) for _ in range(self.depth))

    def add_set(self) -> nn.ModuleList:
        """Append a fresh set (on the device and in the mode of the module) and return it."""
        fresh = self.new_set().train(self.training)
        if len(self.sets):
            fresh.to(next(self.sets[0].parameters()).device)
        self.sets.append(fresh)
        return fresh

    def parameter_set(self, index: int) -> nn.Module:
        return self.sets[index]

    @contextlib.contextmanager
    def using(self, index: int | None) -> Iterator[None]:
        """Run set ``index`` (-1: the newest; None: no adapter, the pre-trained model)."""
        if index is None:
            with self.disabled():
                yield
            return
        was, self.active = self.active, index
        try:
            yield
        finally:
            self.active = was

    def attach(self, model: nn.Module) -> ParallelAdapters:
        for i, block in enumerate(model.blocks):
            self._handles.append(block.norm2.register_forward_pre_hook(partial(self._take, i)))
            self._handles.append(block.register_forward_hook(partial(self._add, i)))
        return self

    def _take(self, i: int, module: nn.Module, args: tuple) -> None:
        if self.enabled and len(self.sets):
            self._inputs[i] = args[0]

    def _add(self, i: int, module: nn.Module, args: tuple, output: torch.Tensor):
        x = self._inputs.pop(i, None)
        if x is None:
            return None
        return output + self.sets[self.active][i](x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        stored = {
            k[len(prefix) :].split(".")[1] for k in state_dict if k.startswith(prefix + "sets.")
        }
        while len(self.sets) < len(stored):
            self.add_set()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ScaleShift(nn.Module):
    """SSF's ``x * scale + shift`` over the channels (the last dimension, or the second of an
    ``NCHW`` map)."""

    def __init__(self, dim: int, identity: bool = False) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))
        if not identity:
            nn.init.normal_(self.scale, mean=1.0, std=0.02)
            nn.init.normal_(self.shift, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:  # the patch projection's (B, C, H, W) map
            return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)
        return x * self.scale + self.shift


def ssf_targets(model: nn.Module) -> dict[str, int]:
    """The submodules SSF follows (APER's ``vision_transformer_ssf.py``) and their widths."""
    targets = {"patch_embed.proj": model.patch_embed.proj.out_channels}
    if not isinstance(getattr(model.patch_embed, "norm", nn.Identity()), nn.Identity):
        targets["patch_embed.norm"] = model.embed_dim
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}."
        targets[p + "norm1"] = model.embed_dim
        targets[p + "attn.qkv"] = block.attn.qkv.out_features
        targets[p + "attn.proj"] = block.attn.proj.out_features
        targets[p + "norm2"] = model.embed_dim
        targets[p + "mlp.fc1"] = block.mlp.fc1.out_features
        targets[p + "mlp.fc2"] = block.mlp.fc2.out_features
    targets["norm"] = model.embed_dim
    return targets


class SSF(PEFTModule):
    """Scale and shift after the operations of :func:`ssf_targets`; ``ops`` is keyed by the
    target's name with ``_`` for ``.`` (``blocks_0_attn_qkv``)."""

    def __init__(self, targets: dict[str, int], identity: bool = False) -> None:
        super().__init__()
        self.targets = dict(targets)
        self.ops = nn.ModuleDict(
            {name.replace(".", "_"): ScaleShift(dim, identity) for name, dim in targets.items()}
        )

    def attach(self, model: nn.Module) -> SSF:
        for name in self.targets:
            op = self.ops[name.replace(".", "_")]
            target = model.get_submodule(name)
            self._handles.append(target.register_forward_hook(partial(self._scale_shift, op)))
        return self

    def _scale_shift(self, op: ScaleShift, module: nn.Module, args: tuple, output: torch.Tensor):
        return op(output) if self.enabled else None


class VPT(PEFTModule):
    """Prompt tokens appended to the token sequence: before the first block and dropped after
    the last (``deep=False``), or before and after every block, each with its own (deep)."""

    def __init__(self, dim: int, depth: int, tokens: int, deep: bool) -> None:
        super().__init__()
        self.deep, self.tokens = deep, tokens
        self.prompts = nn.Parameter(torch.zeros(depth if deep else 1, tokens, dim))

    def attach(self, model: nn.Module) -> VPT:
        blocks = list(model.blocks)
        if self.deep:
            pairs = [(block, block, i) for i, block in enumerate(blocks)]
        else:
            pairs = [(blocks[0], blocks[-1], 0)]
        for first, last, i in pairs:
            self._handles.append(first.register_forward_pre_hook(partial(self._append, i)))
            self._handles.append(last.register_forward_hook(self._drop))
        return self

    def _append(self, i: int, module: nn.Module, args: tuple):
        if not self.enabled:
            return None
        x = args[0]
        prompts = self.prompts[i].to(x.dtype).expand(x.shape[0], -1, -1)
        return (torch.cat([x, prompts], dim=1), *args[1:])

    def _drop(self, module: nn.Module, args: tuple, output: torch.Tensor):
        return output[:, : -self.tokens] if self.enabled else None


class PEFTBranches(nn.Module):
    """One ViT run once per branch, the features concatenated: without its PEFT module first
    (``pretrained``), then with each of the module's parameter sets in order. APER's dual
    branch is ``[pre-trained, adapted]``, EASE's subspaces one adapter set per task.

    Args:
        vit: a timm ViT backbone with a PEFT module attached (``vit.peft``, :func:`attach_peft`).
        pretrained: lead with the pre-trained model's features.
    """

    def __init__(self, vit: nn.Module, pretrained: bool) -> None:
        super().__init__()
        self.vit, self.pretrained = vit, pretrained

    @property
    def peft(self) -> PEFTModule:
        return self.vit.peft

    @property
    def num_branches(self) -> int:
        return self.peft.num_sets + int(self.pretrained)

    @property
    def out_dim(self) -> int:
        return int(self.vit.out_dim) * self.num_branches

    @property
    def provenance(self) -> dict[str, Any]:
        return self.vit.provenance

    def branch(self, x: torch.Tensor, index: int | None) -> torch.Tensor:
        """Features with parameter set ``index`` (-1: the newest; None: the pre-trained model)."""
        with self.peft.using(index):
            return self.vit(x)

    def indices(self) -> list[int | None]:
        """The branches in feature order: None for the pre-trained model, then each set."""
        return ([None] if self.pretrained else []) + list(range(self.peft.num_sets))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch(x, i) for i in self.indices()], dim=1)

    def branch_modules(self) -> list[PEFTBranch]:
        """Each branch as a module of its own (:class:`PEFTBranch`), in feature order; the same
        objects at every call while the branches exist, so a cache keyed on them (the engine's
        test-feature cache) keeps every branch's features while later sets are added."""
        views: dict[int | None, PEFTBranch] = self.__dict__.setdefault("_views", {})
        for index in self.indices():
            if index not in views:
                views[index] = PEFTBranch(self, index)
        return [views[index] for index in self.indices()]


class PEFTBranch(nn.Module):
    """One branch of a :class:`PEFTBranches`: its forward is ``branches.branch(x, index)``,
    and its parameters are only what that branch reads (the ViT's own weights and parameter
    set ``index``), so a fingerprint of its values does not change when another set is added
    or trained. A view: its modules belong to the learner's network, which owns and saves them.
    """

    def __init__(self, branches: PEFTBranches, index: int | None) -> None:
        super().__init__()
        self.index = index
        self.model = branches.vit.model
        self.parameters_of_set = None if index is None else branches.peft.parameter_set(index)
        self.__dict__["_branches"] = branches  # not a submodule: the view does not own it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.__dict__["_branches"].branch(x, self.index)


def vision_transformer(backbone: nn.Module, who: str) -> nn.Module:
    """The timm ``VisionTransformer`` of a ``backbone.name: timm`` backbone.

    Raises:
        ConfigError: any other backbone (one line, naming ``who``).
    """
    from timm.models.vision_transformer import VisionTransformer

    model = getattr(backbone, "model", None)
    if not isinstance(model, VisionTransformer):
        kind = type(model if model is not None else backbone).__name__
        raise ConfigError(
            f"backbone: {who} tunes a timm ViT (backbone.name=timm, backbone.model=vit_...), "
            f"not a {kind}"
        )
    return model


def create_peft(
    method: str,
    model: nn.Module,
    *,
    bottleneck: int = 64,
    scale: float = 0.1,
    dropout: float = 0.1,
    prompts: int = 5,
    identity: bool = False,
) -> PEFTModule:
    """Build PEFT module ``method`` (:data:`PEFT_METHODS`) sized to the timm ViT ``model``, on
    its device and in its mode, attach it to ``model`` and freeze ``model``'s own parameters.

    Args:
        method: ``adapter``, ``ssf``, ``vpt_shallow`` or ``vpt_deep``.
        model: a timm ``VisionTransformer``.
        bottleneck: adapter width (APER's ``ffn_num``).
        scale: adapter output scale (``ffn_adapter_scalar``).
        dropout: dropout inside the adapter.
        prompts: VPT tokens (``prompt_token_num``).
        identity: SSF starts at scale 1, shift 0 (the code draws them near those).
    """
    dim, depth = int(model.embed_dim), len(model.blocks)
    if method == "adapter":
        module: PEFTModule = ParallelAdapters(dim, depth, bottleneck, scale, dropout)
    elif method == "ssf":
        module = SSF(ssf_targets(model), identity)
    elif method in ("vpt_shallow", "vpt_deep"):
        module = VPT(dim, depth, prompts, deep=method == "vpt_deep")
    else:
        raise ConfigError(f"peft: unknown method '{method}'; use one of {', '.join(PEFT_METHODS)}")
    model.requires_grad_(False)
    device = next(model.parameters()).device
    return module.to(device).train(model.training).attach(model)


def attach_peft(backbone: nn.Module, method: str, who: str, **options: Any) -> PEFTModule:
    """:func:`create_peft` on a timm ViT backbone, registered as ``backbone.peft``.

    Args:
        backbone: a :class:`~cilkit.backbones.timm_backbone.TimmBackbone` of a ViT.
        method: see :data:`PEFT_METHODS`.
        who: the learner, for the error message.
        **options: :func:`create_peft`'s options.

    Raises:
        ConfigError: the backbone is not a timm ViT.
    """
    module = create_peft(method, vision_transformer(backbone, who), **options)
    backbone.add_module("peft", module)
    return module
