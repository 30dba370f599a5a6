"""PEFT modules on a timm ViT: unused or at their identity they leave timm's forward bit for bit,
each sits exactly where APER's code puts it, only its own parameters train, and two models in
one process never share anything."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("timm")
import timm  # noqa: E402

from cilkit.backbones import create_network  # noqa: E402
from cilkit.backbones.peft import (  # noqa: E402
    PEFT_METHODS,
    ParallelAdapters,
    PEFTBranches,
    attach_peft,
    create_peft,
)
from cilkit.config import build_config  # noqa: E402
from cilkit.errors import ConfigError  # noqa: E402

KWARGS = {"img_size": 8, "patch_size": 4, "depth": 2, "embed_dim": 24, "num_heads": 3}


def _vit(seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, in_chans=1, **KWARGS).eval()


def _x(n: int = 5):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(7))


def _randomise(module: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 else 0.0))


@pytest.mark.parametrize(("method", "options"), [("adapter", {}), ("ssf", {"identity": True})])
def test_a_new_adapter_and_an_identity_ssf_leave_timms_output_bit_for_bit(method, options):
    model, x = _vit(), _x()
    plain = model(x)
    create_peft(method, model, **options)
    assert torch.equal(model(x), plain)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_a_disabled_module_is_the_plain_model_and_only_its_parameters_train(method):
    model, x = _vit(), _x()
    plain = model(x)
    module = create_peft(method, model)
    _randomise(module)
    assert not torch.allclose(model(x), plain)  # it acts when enabled
    with module.disabled():
        assert torch.equal(model(x), plain)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert not trainable  # the pre-trained weights are frozen
    assert all(p.requires_grad for p in module.parameters())
    model(x).square().sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in module.parameters())


def _block_by_hand(block, x, adapter=None):
    """APER's block: x + attn(norm1(x)), then + mlp(norm2(x)) + adapter(x)."""
    x = x + block.attn(block.norm1(x))
    extra = adapter(x) if adapter is not None else 0
    return x + block.mlp(block.norm2(x)) + extra


def _tokens(model, x):
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))


def _pooled(model, x):
    return model.forward_head(model.norm(x), pre_logits=True)


def test_the_adapter_is_parallel_to_the_mlp_on_the_stream_after_attention():
    model, x = _vit(), _x()
    module = create_peft("adapter", model)
    _randomise(module)
    with module.disabled():  # the reference runs the blocks' parts without the hooks
        h = _tokens(model, x)
        for block, adapter in zip(model.blocks, module.sets[0], strict=True):
            h = _block_by_hand(block, h, adapter)
        expected = _pooled(model, h)
    torch.testing.assert_close(model(x), expected)


@torch.no_grad()
def _fold(ssf, model):
    """The plain model with each scale-shift folded into the layer before it."""
    folded = copy.deepcopy(model)
    for name in ssf.targets:
        op, layer = ssf.ops[name.replace(".", "_")], folded.get_submodule(name)
        w = layer.weight
        w.mul_(op.scale.view(-1, *([1] * (w.ndim - 1))))
        layer.bias.mul_(op.scale).add_(op.shift)
    return folded


def test_ssf_scales_and_shifts_after_each_of_apers_operations():
    model, x = _vit(), _x()
    reference = copy.deepcopy(model)
    ssf = create_peft("ssf", model)
    names = set(ssf.targets)
    assert {"patch_embed.proj", "norm", "blocks.1.attn.qkv", "blocks.0.mlp.fc2"} <= names
    assert len(names) == 2 + 6 * len(model.blocks)
    torch.testing.assert_close(model(x), _fold(ssf, reference)(x))


@pytest.mark.parametrize("deep", [False, True])
def test_vpt_appends_prompts_before_the_blocks_and_drops_them_after(deep):
    model, x = _vit(), _x()
    vpt = create_peft("vpt_deep" if deep else "vpt_shallow", model, prompts=3)
    assert vpt.prompts.shape == (len(model.blocks) if deep else 1, 3, 24)
    assert not vpt.prompts.any()  # zero-initialised, as APER's code
    _randomise(vpt)
    prompts = vpt.prompts.expand(len(x), -1, -1, -1)
    with vpt.disabled():
        h = _tokens(model, x)
        if not deep:
            h = torch.cat([h, prompts[:, 0]], dim=1)
        for i, block in enumerate(model.blocks):
            h = block(torch.cat([h, prompts[:, i]], dim=1))[:, :-3] if deep else block(h)
        expected = _pooled(model, h if deep else h[:, :-3])
    torch.testing.assert_close(model(x), expected)


def test_two_models_and_a_deep_copy_never_share_a_module():
    a, b, x = _vit(), _vit(), _x()
    plain = b(x)
    module = create_peft("adapter", a)
    _randomise(module)
    assert torch.equal(b(x), plain)  # the class is untouched
    holder = torch.nn.Module()
    holder.model, holder.peft = a, module
    twin = copy.deepcopy(holder)
    before = a(x)
    _randomise(twin.peft, seed=11)
    assert torch.equal(a(x), before)
    assert not torch.allclose(twin.model(x), before)
    with twin.peft.disabled():
        assert torch.equal(twin.model(x), plain)


def test_adapter_sets_switch_and_a_checkpoint_with_more_sets_loads_into_a_fresh_module():
    model, x = _vit(), _x()
    adapters = create_peft("adapter", model)
    assert isinstance(adapters, ParallelAdapters)
    adapters.add_set()
    _randomise(adapters)
    outs = {}
    for index in (None, 0, 1):
        with adapters.using(index):
            outs[index] = model(x)
    assert torch.equal(model(x), outs[1])  # the newest set is the default
    assert not torch.allclose(outs[0], outs[1])
    fresh_model = _vit()
    fresh = create_peft("adapter", fresh_model)
    fresh.load_state_dict(adapters.state_dict())
    assert len(fresh.sets) == 2
    with fresh.using(0):
        assert torch.equal(fresh_model(x), outs[0])


def test_attach_peft_registers_the_module_on_the_backbone_and_refuses_other_backbones():
    data = {"name": "timm", "model": "vit_tiny_patch16_224", "kwargs": dict(KWARGS)}
    net = create_network(build_config({"backbone": data}).backbone, 1)
    module = attach_peft(net.backbone, "vpt_deep", "learner 'aper'")
    assert net.backbone.peft is module
    assert {n for n, p in net.backbone.named_parameters() if p.requires_grad} == {"peft.prompts"}
    cnn = create_network(build_config({"backbone": {"name": "convnet4"}}).backbone, 1)
    with pytest.raises(ConfigError, match="learner 'aper' tunes a timm ViT") as err:
        attach_peft(cnn.backbone, "adapter", "learner 'aper'")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["ssf", "adapter"])
def test_branches_concatenate_the_pretrained_model_then_each_parameter_set(method):
    data = {"name": "timm", "model": "vit_tiny_patch16_224", "kwargs": dict(KWARGS)}
    vit = create_network(build_config({"backbone": data}).backbone, 1).backbone.eval()
    x = _x()
    plain = vit(x)
    module = attach_peft(vit, method, "test")
    if method == "adapter":
        module.add_set()
    _randomise(module)
    branches = PEFTBranches(vit, pretrained=True)
    sets = [vit(x)] if method == "ssf" else []
    for i in range(module.num_sets if method == "adapter" else 0):
        with module.using(i):
            sets.append(vit(x))
    assert branches.out_dim == 24 * (1 + len(sets)) == branches(x).shape[1]
    assert torch.equal(branches(x), torch.cat([plain, *sets], dim=1))
    assert torch.equal(PEFTBranches(vit, pretrained=False)(x), torch.cat(sets, dim=1))
