"""One seam into a timm ``VisionTransformer``'s token pipeline, for the methods that change what
happens inside the transformer: prompts prepended to the tokens (L2P), key and value prefixes in
the attention of chosen blocks (DualPrompt, CODA-Prompt), a low-rank delta on a block's ``qkv``
projection (InfLoRA).

The pipeline is timm's own, step by step, on the model's own submodules: ``patch_embed``,
``_pos_embed`` (class and register tokens, position embedding), ``patch_drop``, ``norm_pre``,
the blocks, ``norm``, and ``forward_head(pre_logits=True)`` for the pooled feature. What a pass
changes is an argument of the call (:class:`TokenEdits`), never a patch of a timm class or state
on the model, so two models in one process (L2P's frozen query model and its prompted one), or
one model run with and without edits, do not affect each other. A block without an edit runs
its own ``forward`` (its hooks included, so a PEFT module of :mod:`cilkit.backbones.peft` still
applies there); a block with an edit runs :func:`block_forward`, timm's ``Block`` and
``Attention`` computation written out on the block's submodules. Without edits the output is
bit-identical to ``model.forward_features`` and ``forward_head`` (a test, for ViT-Tiny and
ViT-Base configurations, on the lowest and the newest timm the ``[timm]`` extra allows); so is
an edited block whose delta is zero and whose prefix is empty.

Where the tokens go, as the authors' codes put them:

- prompts before block ``i`` are inserted right after the prefix tokens (class and register
  tokens), so the class token stays first: L2P's ``[cls, prompts, patches]``
  (JH-LEE-KR/l2p-pytorch ``vision_transformer.py``); they stay in the sequence through the
  later blocks and are dropped before pooling, so timm's pooling sees the tokens it expects;
- key and value prefixes of block ``i`` are concatenated in front of the keys and values after
  the ``qkv`` projection (and after ``k_norm``, the identity in these ViTs), head by head: the
  prefix-tuning of DualPrompt (JH-LEE-KR/dualprompt-pytorch ``attention.py``
  ``PreT_Attention``) and CODA-Prompt (GT-RIPL/CODA-Prompt ``models/vit.py``); the queries and
  the output keep the sequence's length;
- a ``qkv`` delta of block ``i`` is added to the projection's output before the heads split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cilkit.errors import ConfigError

Prefix = tuple[torch.Tensor, torch.Tensor]
"""Key and value prefix of one block's attention, each ``(B or 1, L, heads * head_dim)``."""


@dataclass(frozen=True)
class TokenEdits:
    """What one forward pass changes inside the ViT, by block index.

    Attributes:
        prompts: tokens ``(B or 1, P, dim)`` inserted before block ``i``, after the prefix
            tokens.
        prefixes: key and value prefixes of block ``i``'s attention (:data:`Prefix`).
        qkv_delta: a function of block ``i``'s attention input ``(B, N, dim)`` whose output
            ``(B, N, 3 * heads * head_dim)`` is added to its ``qkv`` projection.
    """

    prompts: Mapping[int, torch.Tensor] = field(default_factory=dict)
    prefixes: Mapping[int, Prefix] = field(default_factory=dict)
    qkv_delta: Mapping[int, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)

    def edits_block(self, i: int) -> bool:
        """Block ``i`` runs :func:`block_forward` (it has a prefix or a delta)."""
        return i in self.prefixes or i in self.qkv_delta


NO_EDITS = TokenEdits()


@dataclass(frozen=True)
class Tokens:
    """The token sequence after the final norm, and where the inserted prompts are.

    Attributes:
        tokens: ``(B, N, dim)``: the prefix tokens, then ``prompts`` inserted prompt tokens (the
            latest inserted first), then the patch tokens.
        num_prefix: the model's prefix tokens (class and register tokens).
        prompts: how many prompt tokens were inserted.
    """

    tokens: torch.Tensor
    num_prefix: int
    prompts: int

    @property
    def prompt_tokens(self) -> torch.Tensor:
        """The inserted prompts' outputs, ``(B, prompts, dim)``."""
        return self.tokens[:, self.num_prefix : self.num_prefix + self.prompts]

    @property
    def model_tokens(self) -> torch.Tensor:
        """The sequence without the inserted prompts: the layout timm's pooling expects."""
        if not self.prompts:
            return self.tokens
        n = self.num_prefix
        return torch.cat([self.tokens[:, :n], self.tokens[:, n + self.prompts :]], dim=1)


_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
_ATTN_PARTS = ("qkv", "num_heads", "head_dim", "q_norm", "k_norm", "attn_drop", "proj", "proj_drop")


def check_token_vit(model: nn.Module, who: str) -> nn.Module:
    """``model`` itself when the seam can edit it: a timm ``VisionTransformer`` whose blocks are
    timm's pre-norm ``Block`` with its standard ``Attention``.

    Raises:
        ConfigError: another model or block type (one line, naming ``who``).
    """
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ConfigError(
            f"backbone: {who} edits a timm ViT's tokens (backbone.name=timm, "
            f"backbone.model=vit_...), not a {type(model).__name__}"
        )
    for i, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        if type(block).__name__ != "Block" or any(not hasattr(block, p) for p in _BLOCK_PARTS):
            raise ConfigError(
                f"backbone: {who} edits timm's pre-norm ViT Block; block {i} is a "
                f"{type(block).__name__}"
            )
        if any(not hasattr(attn, p) for p in _ATTN_PARTS) or hasattr(attn, "rope"):
            raise ConfigError(
                f"backbone: {who} edits timm's standard ViT Attention; block {i}'s is a "
                f"{type(attn).__name__}"
            )
    return model


def attention_forward(
    attn: nn.Module,
    x: torch.Tensor,
    prefix: Prefix | None = None,
    delta: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """timm's ``Attention.forward`` on ``attn``'s submodules, with a key/value ``prefix`` and a
    ``qkv`` ``delta`` (either may be None)."""
    B, N, _ = x.shape
    heads, head_dim = int(attn.num_heads), int(attn.head_dim)
    gate = getattr(attn, "gate", None)
    gate = gate(x).sigmoid() if gate is not None else None
    qkv = attn.qkv(x)
    if delta is not None:
        qkv = qkv + delta(x)
    q, k, v = qkv.reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if prefix is not None and prefix[0].shape[1]:  # an empty prefix keeps timm's layout
        k = torch.cat([_heads(prefix[0], B, heads, head_dim, k.dtype), k], dim=2)
        v = torch.cat([_heads(prefix[1], B, heads, head_dim, v.dtype), v], dim=2)
    if attn.fused_attn:
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0
        )
    else:
        q = q * attn.scale
        weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = attn.attn_drop(weights) @ v
    x = x.transpose(1, 2).reshape(B, N, heads * head_dim)
    norm = getattr(attn, "norm", None)
    if norm is not None:
        x = norm(x)
    if gate is not None:
        x = x * gate
    return attn.proj_drop(attn.proj(x))


def _heads(t: torch.Tensor, batch: int, heads: int, head_dim: int, dtype) -> torch.Tensor:
    """``(B or 1, L, heads * head_dim)`` as ``(B, heads, L, head_dim)``."""
    t = t.to(dtype).expand(batch, -1, -1)
    return t.reshape(batch, t.shape[1], heads, head_dim).transpose(1, 2)


def block_forward(
    block: nn.Module,
    x: torch.Tensor,
    prefix: Prefix | None = None,
    delta: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """timm's pre-norm ``Block.forward`` on ``block``'s submodules, its attention through
    :func:`attention_forward` (hooks on the block itself do not run; on its submodules they
    do)."""
    x = x + block.drop_path1(
        block.ls1(attention_forward(block.attn, block.norm1(x), prefix, delta))
    )
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


class TokenViT:
    """The seam over one timm ViT instance (a view: it owns no parameters and holds no state of
    a pass, so the model's state dict and its plain ``forward`` are untouched).

    Args:
        model: a timm ``VisionTransformer`` (:func:`check_token_vit`).
        who: the learner, for error messages.
    """

    def __init__(self, model: nn.Module, who: str = "this method") -> None:
        self.model = check_token_vit(model, who)
        self.num_prefix = int(model.num_prefix_tokens)
        self.dim = int(model.embed_dim)
        self.depth = len(model.blocks)
        attn = model.blocks[0].attn
        self.heads, self.head_dim = int(attn.num_heads), int(attn.head_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images to the first block's input: patches, class token and position embedding."""
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    def tokens(self, x: torch.Tensor, edits: TokenEdits = NO_EDITS) -> Tokens:
        """The token sequence after the final norm, with ``edits`` applied."""
        t, inserted = self.embed(x), 0
        for i, block in enumerate(self.model.blocks):
            if i in edits.prompts:
                p = edits.prompts[i].to(t.dtype).expand(t.shape[0], -1, -1)
                n = self.num_prefix
                t = torch.cat([t[:, :n], p, t[:, n:]], dim=1)
                inserted += p.shape[1]
            if edits.edits_block(i):
                t = block_forward(block, t, edits.prefixes.get(i), edits.qkv_delta.get(i))
            else:
                t = block(t)
        return Tokens(self.model.norm(t), self.num_prefix, inserted)

    def pooled(self, tokens: Tokens) -> torch.Tensor:
        """timm's pooled pre-logits feature of ``tokens`` (the inserted prompts left out)."""
        return self.model.forward_head(tokens.model_tokens, pre_logits=True)

    def __call__(self, x: torch.Tensor, edits: TokenEdits = NO_EDITS) -> torch.Tensor:
        """The pooled feature with ``edits``: ``model(x)`` (``num_classes=0``) without them."""
        return self.pooled(self.tokens(x, edits))
