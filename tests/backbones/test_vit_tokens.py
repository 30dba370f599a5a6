"""The token seam into timm's ViT: without edits (and with a zero delta and an empty prefix) it is
timm's forward bit for bit, each edit computes what its reference computes where it says, and
two models in one process never share anything.

CI runs this file a second time on the lowest timm the extra allows (``.ci/run``), with
``CILKIT_EXPECT_TIMM`` set to that version, so a silent fallback to the newest is a failure.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

pytest.importorskip("timm")
import timm  # noqa: E402

from cilkit.backbones.vit_tokens import TokenEdits, TokenViT, check_token_vit  # noqa: E402
from cilkit.errors import ConfigError  # noqa: E402

# the vit_tiny and vit_base configurations (depth, width, heads) at a small image size
CONFIGS = {
    "vit_tiny": ("vit_tiny_patch16_224", {"img_size": 32}),
    "vit_base": ("vit_base_patch16_224", {"img_size": 32}),
}
SMALL = {"img_size": 16, "patch_size": 4, "depth": 3, "embed_dim": 24, "num_heads": 3}


def _vit(name="vit_tiny_patch16_224", seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=0, **(kwargs or SMALL)).eval()


def _x(size=16, n=3, seed=7):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _zero_delta(x):
    return torch.zeros(*x.shape[:2], 3 * x.shape[-1], dtype=x.dtype)


def test_the_installed_timm_is_the_one_ci_asked_for():
    expected = os.environ.get("CILKIT_EXPECT_TIMM")
    if expected:
        assert timm.__version__ == expected


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("fused", [True, False])
def test_no_edit_a_zero_delta_and_an_empty_prefix_are_timms_forward_bit_for_bit(config, fused):
    name, kwargs = CONFIGS[config]
    model = _vit(name, **kwargs)
    for block in model.blocks:
        block.attn.fused_attn = fused
    x = _x(32, n=2)
    with torch.no_grad():
        plain = model(x)
        seam = TokenViT(model)
        assert torch.equal(seam(x), plain)
        empty = torch.zeros(1, 0, seam.dim)
        every = range(seam.depth)
        edits = TokenEdits(
            prefixes={i: (empty, empty) for i in every}, qkv_delta={i: _zero_delta for i in every}
        )
        assert torch.equal(seam(x, edits), plain)
        assert torch.equal(seam(x), plain)  # an edited pass leaves nothing behind


def _reference_prefix_attention(attn, x, pk, pv):
    B, N, C = x.shape
    H, d = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    k = torch.cat([pk.expand(B, -1, -1).reshape(B, -1, H, d).transpose(1, 2), k], dim=2)
    v = torch.cat([pv.expand(B, -1, -1).reshape(B, -1, H, d).transpose(1, 2), v], dim=2)
    w = (q @ k.transpose(-2, -1) * d**-0.5).softmax(-1)
    return attn.proj((w @ v).transpose(1, 2).reshape(B, N, C))


def test_a_prefix_changes_only_its_block_and_is_prefix_tuning():
    model, x = _vit(), _x()
    seam = TokenViT(model)
    g = torch.Generator().manual_seed(1)
    pk, pv = torch.randn(1, 4, seam.dim, generator=g), torch.randn(1, 4, seam.dim, generator=g)
    seen: dict[int, torch.Tensor] = {}
    handles = [
        b.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
        for i, b in enumerate(model.blocks)
    ]
    with torch.no_grad():
        model(x)
        plain = dict(seen)
        seen.clear()
        edited = seam(x, TokenEdits(prefixes={1: (pk, pv)}))
    for h in handles:
        h.remove()
    assert torch.equal(seen[0], plain[0])  # blocks before the named one: untouched
    assert 1 not in seen  # the edited block ran the seam's computation, not its forward
    with torch.no_grad():
        t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        t = model.blocks[0](t)
        b = model.blocks[1]
        t = t + _reference_prefix_attention(b.attn, b.norm1(t), pk, pv)
        t = t + b.mlp(b.norm2(t))
        t = model.blocks[2](t)
        reference = model.forward_head(model.norm(t), pre_logits=True)
    torch.testing.assert_close(edited, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(edited, model(x))


def test_prompts_go_after_the_class_token_stay_to_the_end_and_leave_pooling_alone():
    model, x = _vit(), _x()
    seam = TokenViT(model)
    prompts = torch.randn(1, 5, seam.dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = seam.tokens(x, TokenEdits(prompts={0: prompts}))
        t = seam.embed(x)
        t = torch.cat([t[:, :1], prompts.expand(len(x), -1, -1), t[:, 1:]], dim=1)
        reference = model.norm(model.blocks(t))
    assert out.prompts == 5 and out.num_prefix == 1
    assert torch.equal(out.tokens, reference)
    assert torch.equal(out.prompt_tokens, reference[:, 1:6])
    assert torch.equal(out.model_tokens, torch.cat([reference[:, :1], reference[:, 6:]], 1))
    assert torch.equal(seam.pooled(out), reference[:, 0])  # the class token, timm's 'token' pool


def test_prompts_before_a_later_block_enter_there():
    model, x = _vit(), _x()
    seam = TokenViT(model)
    p = torch.randn(2, 3, seam.dim, generator=torch.Generator().manual_seed(4))[:1]
    with torch.no_grad():
        out = seam.tokens(x, TokenEdits(prompts={2: p}))
        t = model.blocks[1](model.blocks[0](seam.embed(x)))
        t = torch.cat([t[:, :1], p.expand(len(x), -1, -1), t[:, 1:]], dim=1)
        assert torch.equal(out.tokens, model.norm(model.blocks[2](t)))


def test_a_low_rank_delta_equals_the_merged_weight():
    model, x = _vit(), _x()
    seam = TokenViT(model)
    g = torch.Generator().manual_seed(5)
    down, up = torch.randn(2, seam.dim, generator=g), torch.randn(3 * seam.dim, 2, generator=g)
    merged = copy.deepcopy(model)
    with torch.no_grad():
        merged.blocks[1].attn.qkv.weight += up @ down
        edited = seam(x, TokenEdits(qkv_delta={1: lambda h: h @ (up @ down).T}))
        torch.testing.assert_close(edited, merged(x), rtol=1e-5, atol=1e-5)


def test_two_models_in_one_process_do_not_affect_each_other():
    query, prompted = _vit(seed=0), _vit(seed=0)
    x = _x()
    with torch.no_grad():
        before = query(x)
        seam = TokenViT(prompted)
        p = torch.randn(1, 4, seam.dim)
        pk = torch.randn(1, 2, seam.dim)
        edits = TokenEdits(
            prompts={0: p}, prefixes={1: (pk, pk)}, qkv_delta={2: lambda h: h.repeat(1, 1, 3)}
        )
        assert not torch.allclose(seam(x, edits), before)
        assert torch.equal(query(x), before)
        assert torch.equal(prompted(x), before)
    assert set(prompted.state_dict()) == set(query.state_dict())


def test_gradients_reach_the_prompts_and_prefixes_through_a_frozen_model():
    model, x = _vit(), _x()
    model.requires_grad_(False)
    seam = TokenViT(model)
    p = torch.zeros(1, 2, seam.dim, requires_grad=True)
    pk = torch.zeros(1, 2, seam.dim, requires_grad=True)
    out = seam.tokens(x, TokenEdits(prompts={0: p}, prefixes={1: (pk, pk)}))
    out.prompt_tokens.mean(1).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert pk.grad is not None and pk.grad.abs().sum() > 0
    assert all(q.grad is None for q in model.parameters())


def test_models_the_seam_cannot_edit_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="timm ViT's tokens.*ResNet"):
        check_token_vit(timm.create_model("resnet18", num_classes=0), "learner 'l2p'")
    model = _vit()
    model.blocks[1] = torch.nn.Identity()
    with pytest.raises(ConfigError, match="block 1 is a Identity"):
        TokenViT(model, "learner 'l2p'")
