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


@pytest.mark.parametrize("name", BACKBONES.names())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_shape(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = create_backbone(BackboneConfig(name=name), in_channels)
    assert isinstance(model.out_dim, int) and model.out_dim > 0
    out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, model.out_dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", BACKBONES.names())
def test_channels_last(name: str) -> None:
    torch.manual_seed(0)
    model = create_backbone(BackboneConfig(name=name), 3).eval()
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
    final = model.layer4(model.layer3(model.layer2(model.layer1(model.stem(x)))))
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
    # One weight (and one bias / sigma) parameter, all trainable.
    params = dict(head.named_parameters())
    assert set(params) <= {"weight", "bias", "sigma"}
    out.sum().backward()
    assert head.weight.grad is not None and head.weight.grad.shape == (7, 8)
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
    with pytest.raises(ConfigError):
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
