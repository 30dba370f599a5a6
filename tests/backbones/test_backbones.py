"""Backbones, expandable heads and the incremental network."""

from __future__ import annotations

import pytest
import torch

from cilkit.backbones import (
    BACKBONES,
    CosineLinear,
    ExpandableLinear,
    IncrementalNet,
    create_backbone,
    create_network,
)
from cilkit.backbones.convnet import ConvNetConfig
from cilkit.backbones.resnet import ResNetConfig
from cilkit.config.schema import BackboneConfig, FieldError
from cilkit.errors import ConfigError


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


SMALL = {
    # a two-block ViT taking any image size (the registry tests feed 8 to 32 px)
    "timm": {
        "model": "vit_tiny_patch16_224",
        "kwargs": {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 24, "num_heads": 3}
        | {"dynamic_img_size": True},
    },
}
"""Options that make a registered backbone small enough for these tests."""
CNN_ONLY = {"timm": "a ViT pools its class token and has no last ReLU"}
"""Backbones the CNN-specific checks (mean-pooled last map, the last block's ReLU) skip."""


def _config(name: str) -> BackboneConfig:
    entry = BACKBONES.get(name)
    return (entry.config_cls or BackboneConfig)(name=name, **SMALL.get(name, {}))


@pytest.mark.parametrize("name", BACKBONES.names())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_shape(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = create_backbone(_config(name), in_channels)
    assert isinstance(model.out_dim, int) and model.out_dim > 0
    out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, model.out_dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", BACKBONES.names())
def test_channels_last(name: str) -> None:
    torch.manual_seed(0)
    model = create_backbone(_config(name), 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, model.out_dim)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_registry_entry(name: str) -> None:
    entry = BACKBONES.get(name)
    assert entry.description
    assert entry.config_cls is not None and issubclass(entry.config_cls, BackboneConfig)
    entry.config_cls(name=name)  # defaults are valid


def test_resnet32_size() -> None:
    model = create_backbone(BackboneConfig(name="resnet32"), 3)
    assert 450_000 <= _num_params(model) <= 470_000
    assert model.out_dim == 64
    # Option-A shortcuts have no parameters: only conv and batch-norm weights.
    assert not any("shortcut" in n for n, _ in model.named_parameters())


def test_cifar_resnet_depths() -> None:
    sizes = {
        n: _num_params(create_backbone(BackboneConfig(name=n), 3))
        for n in ("resnet20", "resnet32", "resnet56")
    }
    assert sizes["resnet20"] < sizes["resnet32"] < sizes["resnet56"]


@pytest.mark.parametrize(("stem", "stem_size"), [("imagenet", 8), ("cifar", 32)])
def test_resnet18_stems(stem: str, stem_size: int) -> None:
    model = create_backbone(ResNetConfig(name="resnet18", stem=stem), 3)  # type: ignore[arg-type]
    x = torch.randn(2, 3, 32, 32)
    assert model.stem(x).shape == (2, 64, stem_size, stem_size)
    final = model.forward_intermediates(x)[1][-1]
    assert final.shape[-1] == max(1, stem_size // 8)
    assert model(x).shape == (2, 512)


def test_plain_config_gets_defaults() -> None:
    model = create_backbone(BackboneConfig(name="resnet18"), 3)
    assert model.stem[0].kernel_size == (7, 7)  # the imagenet stem is the default
    convnet = create_backbone(BackboneConfig(name="convnet4"), 1)
    assert convnet.out_dim == 64


def test_bad_options() -> None:
    with pytest.raises(FieldError):
        ResNetConfig(name="resnet18", stem="tiny")  # type: ignore[arg-type]
    with pytest.raises(FieldError):
        ConvNetConfig(hidden=0)
    with pytest.raises(ConfigError, match="resnet32"):
        create_backbone(BackboneConfig(name="resnet33"), 3)
    with pytest.raises(ConfigError):
        create_backbone(BackboneConfig(name="resnet32"), 0)


def test_config_loader_picks_backbone_options() -> None:
    from cilkit.config import build_config

    cfg = build_config({"backbone": {"name": "resnet18", "stem": "cifar"}})
    assert isinstance(cfg.backbone, ResNetConfig) and cfg.backbone.stem == "cifar"
    cfg = build_config({"backbone": {"name": "convnet4", "hidden": 32}})
    assert create_backbone(cfg.backbone, 1).out_dim == 32


@pytest.mark.parametrize("size", [8, 28])
def test_convnet4_sizes(size: int) -> None:
    model = create_backbone(ConvNetConfig(hidden=16), 1)
    assert model.out_dim == 16
    out = model(torch.randn(3, 1, size, size))
    assert out.shape == (3, 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("head_cls", [ExpandableLinear, CosineLinear])
def test_head_expand_keeps_old_classes(head_cls: type) -> None:
    torch.manual_seed(0)
    head = head_cls(8)
    x = torch.randn(5, 8)
    assert head.num_classes == 0
    assert head(x).shape == (5, 0)
    head.expand(3)
    first = head(x).detach()
    weight = head.weight.detach().clone()
    bias = None if head.bias is None else head.bias.detach().clone()
    head.expand(0)
    head.expand(4)
    assert head.num_classes == 7
    assert head.weight.shape == (7, 8)
    assert torch.equal(head.weight[:3], weight)
    if bias is not None:
        assert head.bias is not None and head.bias.shape == (7,)
        assert torch.equal(head.bias[:3], bias)
    out = head(x)
    assert out.shape == (5, 7)
    torch.testing.assert_close(out[:, :3], first, rtol=0, atol=1e-6)
    # One weight (and bias) chunk per expand, all trainable; sigma for the cosine head.
    params = dict(head.named_parameters())
    assert set(params) <= {"weights.0", "weights.1", "biases.0", "biases.1", "sigma"}
    assert [w.shape[0] for w in head.weights] == [3, 4]
    out.sum().backward()
    assert all(w.grad is not None for w in head.weights)
    with pytest.raises(ValueError):
        head.expand(-1)


def test_linear_head_init_and_no_bias() -> None:
    head = ExpandableLinear(100)
    head.expand(50)
    assert head.weight.abs().max() <= 0.1 and head.bias is not None
    assert head.bias.abs().max() <= 0.1
    nobias = ExpandableLinear(4, bias=False)
    nobias.expand(2)
    assert nobias.bias is None and nobias(torch.randn(3, 4)).shape == (3, 2)


def test_cosine_head_scale() -> None:
    head = CosineLinear(6)
    head.expand(4)
    assert head.sigma is not None and head.sigma.item() == 1.0
    out = head(torch.randn(10, 6))
    assert out.abs().max() <= 1.0 + 1e-6
    with torch.no_grad():
        head.sigma.fill_(10.0)
    assert head(torch.randn(10, 6)).abs().max() > 1.0
    fixed = CosineLinear(6, learn_scale=False)
    fixed.expand(2)
    assert fixed.sigma is None and "sigma" not in dict(fixed.named_parameters())
    x = torch.randn(10, 6)
    assert torch.allclose(fixed(x), fixed.cosine(x))  # plain cosines (LDAM's NormedLinear)
    thirty = CosineLinear(6, learn_scale=False, scale=30.0)
    thirty.expand(2)
    thirty.load_state_dict(fixed.state_dict())
    assert torch.allclose(thirty(x), 30 * fixed.cosine(x))


def test_cosine_head_options_come_from_the_backbone_config() -> None:
    net = create_network(BackboneConfig(head="cosine", learn_cosine_scale=False), 3)
    assert net.head.sigma is None and not list(net.head.parameters())[1:]
    net = create_network(BackboneConfig(head="cosine", cosine_scale=16.0), 3)
    assert net.head.sigma.item() == 16.0


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_state_dict_resizes_head(head: str) -> None:
    net = create_network(BackboneConfig(name="convnet4"), 1, head=head)
    net.expand(5)
    fresh = create_network(BackboneConfig(name="convnet4"), 1, head=head)
    fresh.load_state_dict(net.state_dict())
    assert fresh.num_classes == 5
    net.eval()
    fresh.eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(fresh(x), net(x))


def test_incremental_net() -> None:
    torch.manual_seed(0)
    net = create_network(BackboneConfig(name="resnet20"), 3)
    assert isinstance(net, IncrementalNet)
    assert net.feature_dim == 64 and net.num_classes == 0
    x = torch.randn(2, 3, 16, 16)
    assert net(x).shape == (2, 0)
    net.expand(10)
    assert net.num_classes == 10
    feats = net.forward_features(x)
    assert feats.shape == (2, 64)
    assert net.forward_head(feats).shape == (2, 10)
    assert net(x).shape == (2, 10)
    assert isinstance(
        create_network(BackboneConfig(name="resnet20"), 3, head="cosine").head, CosineLinear
    )
    with pytest.raises(ConfigError, match="unknown head"):
        create_network(BackboneConfig(name="resnet20"), 3, head="mlp")


def test_copy_frozen_is_frozen_and_independent() -> None:
    torch.manual_seed(0)
    net = create_network(BackboneConfig(name="convnet4"), 3)
    net.expand(4)
    net.train()
    old = net.copy_frozen()
    assert not old.training and all(not m.training for m in old.modules())
    assert all(not p.requires_grad for p in old.parameters())
    assert net.training and all(p.requires_grad for p in net.parameters())
    x = torch.randn(3, 3, 16, 16)
    net.eval()
    before = old(x)
    torch.testing.assert_close(before, net(x))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.expand(2)
    assert old.num_classes == 4
    torch.testing.assert_close(old(x), before)
    assert all(
        p.data_ptr() != q.data_ptr()
        for p, q in zip(old.parameters(), net.parameters(), strict=False)
    )


# ---- addressable features: every registered backbone, checked against real outputs ----------


@pytest.mark.parametrize("name", BACKBONES.names())
@pytest.mark.parametrize("size", [8, 32])
def test_feature_info_matches_forward_intermediates(name: str, size: int) -> None:
    """timm-style: ``feature_info`` gives each stage's channels and reduction; the maps
    ``forward_intermediates`` returns have exactly those; the pooled output is ``forward``'s."""
    torch.manual_seed(0)
    model = create_backbone(_config(name), 3).eval()
    x = torch.randn(2, 3, size, size)
    pooled, maps = model.forward_intermediates(x)
    assert len(maps) == len(model.feature_info) >= 3
    for info, fmap in zip(model.feature_info, maps, strict=True):
        assert fmap.shape[1] == info.channels, info
        assert fmap.shape[-1] == max(1, -(-size // info.reduction)), info
        assert model.get_submodule(info.name) is not None
    assert model.feature_info[-1].channels == model.out_dim
    torch.testing.assert_close(pooled, model(x))
    if name not in CNN_ONLY:
        torch.testing.assert_close(pooled, maps[-1].mean(dim=(2, 3)))


@pytest.mark.parametrize("name", BACKBONES.names())
def test_last_block_before_its_relu(name: str) -> None:
    """LUCIR and PODNet read the last block before its ReLU: the same map, unrectified."""
    if name in CNN_ONLY:
        pytest.skip(CNN_ONLY[name])
    torch.manual_seed(0)
    model = create_backbone(_config(name), 3).eval()
    x = torch.randn(2, 3, 16, 16)
    with_relu, maps = model.forward_intermediates(x)
    pre, pre_maps = model.forward_intermediates(x, last_relu=False)
    assert (pre_maps[-1] < 0).any() and (maps[-1] >= 0).all()
    torch.testing.assert_close(torch.relu(pre_maps[-1]), maps[-1])  # (ReLU commutes with max-pool)
    for a, b in zip(maps[:-1], pre_maps[:-1], strict=True):
        torch.testing.assert_close(a, b)
    model.last_relu = False
    torch.testing.assert_close(model(x), pre)
    assert not torch.allclose(pre, with_relu)


# ---- the head growth protocol ------------------------------------------------------------------


@pytest.mark.parametrize("head_cls", [ExpandableLinear, CosineLinear])
def test_head_expand_inputs_keeps_old_columns(head_cls: type) -> None:
    torch.manual_seed(0)
    head = head_cls(4)
    head.expand(3)
    head.expand(2)
    old = head.weight.detach().clone()
    head.expand_inputs(6)
    assert head.in_features == 10 and head.weight.shape == (5, 10)
    assert torch.equal(head.weight[:, :4], old)
    assert head(torch.randn(2, 10)).shape == (2, 5)
    fresh = head_cls(4)
    fresh.load_state_dict(head.state_dict())  # a checkpoint of a widened head loads
    assert fresh.in_features == 10 and torch.equal(fresh.weight, head.weight)


def test_head_scale_and_reset_rows() -> None:
    torch.manual_seed(0)
    head = ExpandableLinear(4)
    head.expand(2)
    head.expand(3)
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    head.scale_weights_(scale)
    assert torch.equal(head.weight, w * scale[:, None]) and torch.equal(head.bias, b * scale)
    head.scale_rows(scale)
    assert torch.equal(head.class_scale, scale)
    head.reset_rows()
    assert torch.equal(head.class_scale, torch.ones(5))
    assert not torch.equal(head.weight, w * scale[:, None])
    head.clamp_weights_(min=0.0)
    assert (head.weight >= 0).all()


def test_heads_come_from_a_registry() -> None:
    from cilkit.backbones import HEADS, create_head

    assert {"linear", "cosine"} <= set(HEADS.names())
    assert isinstance(create_head("cosine", BackboneConfig(), 8), CosineLinear)
    with pytest.raises(ConfigError, match="unknown head 'mlp'"):
        create_head("mlp", BackboneConfig(), 8)


# ---- frozen parts and branched networks --------------------------------------------------------


def test_frozen_stays_in_eval_whatever_its_parent_is_set_to() -> None:
    from torch import nn

    from cilkit.backbones import Frozen

    net = create_network(BackboneConfig(name="convnet4"), 3)
    net.expand(2)
    parent = nn.ModuleDict({"teacher": Frozen(net), "student": nn.BatchNorm1d(3)})
    parent.train()
    assert parent["student"].training
    assert not any(m.training for m in parent["teacher"].modules())
    assert not any(p.requires_grad for p in parent["teacher"].parameters())
    assert parent["teacher"].num_classes == 2  # attributes fall through


def test_branched_net_grows_freezes_and_reloads() -> None:
    from cilkit.backbones import BranchedNet, Frozen, create_head

    torch.manual_seed(0)
    cfg = BackboneConfig(name="convnet4")

    def build():
        return create_backbone(cfg, 3)

    net = BranchedNet(build(), create_head("linear", cfg, 64), build)
    net.expand(2)
    net.add_branch()
    net.expand(3)
    assert len(net.branches) == 2 and net.feature_dim == 128 and net.head.in_features == 128
    assert isinstance(net.branches[0], Frozen) and not isinstance(net.branches[1], Frozen)
    x = torch.randn(2, 3, 16, 16)
    net.train()
    assert not net.branches[0].training and net.branches[1].training
    net.eval()
    expected = net(x)
    fresh = BranchedNet(build(), create_head("linear", cfg, 64), build)
    fresh.load_state_dict(net.state_dict())
    fresh.eval()
    assert len(fresh.branches) == 2 and isinstance(fresh.branches[0], Frozen)
    torch.testing.assert_close(fresh(x), expected)
