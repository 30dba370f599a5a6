"""Trained weights from elsewhere: safe reading, layout mapping, partial loads, the head rows,
and ``backbone.weights`` in a run."""

from __future__ import annotations

import os
import pickle
import re

import pytest
import torch
import torchvision

from cilkit.backbones import create_backbone, create_network
from cilkit.backbones.weights import (
    WeightsError,
    load_backbone_weights,
    load_network_weights,
    read_state_dict,
)
from cilkit.config import build_config
from cilkit.config.schema import BackboneConfig
from cilkit.engine.build import build_run
from cilkit.errors import ConfigError


def _randomised(name: str, seed: int, in_channels: int = 3, **options) -> torch.nn.Module:
    """A backbone whose every tensor (BatchNorm statistics too) is random, so that equality
    after a load means the values were copied."""
    torch.manual_seed(seed)
    cfg = build_config({"backbone": {"name": name, **options}}).backbone
    model = create_backbone(cfg, in_channels)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in key else torch.randn_like(t))
    return model.eval()


def to_pycil(key: str) -> str:
    """cilkit resnet32 name -> PyCIL's ``convs/cifar_resnet.py`` name (written by hand)."""
    key = re.sub(r"^stem\.0\.", "conv_1_3x3.", key)
    key = re.sub(r"^stem\.1\.", "bn_1.", key)
    key = re.sub(r"^stages\.(\d)\.", lambda m: f"stage_{int(m.group(1)) + 1}.", key)
    for a, b in (("conv1", "conv_a"), ("bn1", "bn_a"), ("conv2", "conv_b"), ("bn2", "bn_b")):
        key = key.replace(f".{a}.", f".{b}.")
    return "convnet." + key


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_pycil_resnet32_layout_loads_bit_identically(tmp_path):
    source = _randomised("resnet32", 0)
    state = {to_pycil(k): v for k, v in source.state_dict().items()}
    assert "convnet.stage_3.4.bn_b.running_var" in state  # the hand mapping is PyCIL's
    state["convnet.fc.weight"] = torch.randn(10, 64)  # PyCIL's unused extractor fc
    state["convnet.fc.bias"] = torch.randn(10)
    state["fc.weight"], state["fc.bias"] = torch.randn(7, 64), torch.randn(7)
    torch.save({"tasks": 3, "model_state_dict": state}, tmp_path / "pycil.pkl")
    target = _randomised("resnet32", 1)
    mapped = load_backbone_weights(target, tmp_path / "pycil.pkl")
    _assert_same(target, source)
    assert mapped.complete and "pycil_cifar_resnet" in mapped.layout
    assert mapped.ignored == ["convnet.fc.weight", "convnet.fc.bias"]
    assert torch.equal(mapped.head_weight, state["fc.weight"])


def test_dataparallel_module_prefix_loads_bit_identically(tmp_path):
    torch.manual_seed(0)
    net = create_network(BackboneConfig(name="resnet32"), 3)
    net.backbone = _randomised("resnet32", 2)
    net.expand(5)
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "dp.pth")
    target = _randomised("resnet32", 3)
    mapped = load_backbone_weights(target, tmp_path / "dp.pth")
    _assert_same(target, net.backbone)
    assert mapped.layout.startswith("module. + backbone.")


def test_torchvision_resnet18_gives_the_same_features(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    with torch.no_grad():
        for key, t in tv.state_dict().items():
            if "running" in key:
                t.copy_(torch.rand_like(t) + 0.5 if "var" in key else torch.randn_like(t))
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    ours = _randomised("resnet18", 4)
    mapped = load_backbone_weights(ours, tmp_path / "tv.pth")
    assert mapped.complete and mapped.layout == "torchvision_resnet"
    ref = tv.state_dict()
    assert torch.equal(ours.state_dict()["stem.0.weight"], ref["conv1.weight"])
    assert torch.equal(
        ours.state_dict()["stages.3.0.shortcut.1.running_var"],
        ref["layer4.0.downsample.1.running_var"],
    )
    assert len(mapped.backbone) == len(ref) - 2  # everything but fc.weight / fc.bias
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), tv.eval()(x), atol=1e-5)


class _Payload:
    """Unpickling this runs ``exec``, which would write a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    payload = {"w": torch.zeros(3), "x": _Payload(str(marker))}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(WeightsError) as err:
        read_state_dict(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "refused" in message
    assert not marker.exists()
    # the payload is live: an ordinary unpickler would have run it
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "proof"))))
    assert (tmp_path / "proof").exists()


def test_damaged_truncated_and_missing_files_give_one_line(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(create_backbone(BackboneConfig(name="resnet20"), 3).state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:2000])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(64))
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, empty)
    for path, words in (
        (cut, "damaged"),
        (junk, "not a readable"),
        (tmp_path / "nope.pt", "not found"),
        (empty, "no tensors"),
    ):
        with pytest.raises(WeightsError) as err:
            read_state_dict(path)
        assert (
            "\n" not in str(err.value) and str(path) in str(err.value) and words in str(err.value)
        )


def test_partial_load_is_refused_then_allowed(tmp_path):
    source = _randomised("resnet32", 5)
    state = source.state_dict()
    del state["stages.2.4.conv2.weight"]
    state["stem.0.weight"] = torch.randn(16, 1, 3, 3)  # a grey-scale stem
    torch.save(state, tmp_path / "partial.pth")
    target = _randomised("resnet32", 6)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_backbone_weights(target, tmp_path / "partial.pth")
    message = str(err.value)
    assert "\n" not in message and "missing 1: stages.2.4.conv2.weight" in message
    assert "stem.0.weight [16, 1, 3, 3] in file vs [16, 3, 3, 3]" in message
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # untouched
    mapped = load_backbone_weights(target, tmp_path / "partial.pth", strict=False)
    assert mapped.missing == ["stages.2.4.conv2.weight"] and len(mapped.mismatched) == 1
    after = target.state_dict()
    for k in after:
        expected = before[k] if k in ("stages.2.4.conv2.weight", "stem.0.weight") else state[k]
        assert torch.equal(after[k], expected), k


def test_head_rows_fill_the_first_growth_in_class_order(tmp_path):
    source = _randomised("resnet20", 7)
    w, b = torch.randn(10, 64), torch.randn(10)
    torch.save({**source.state_dict(), "fc.weight": w, "fc.bias": b}, tmp_path / "m.pth")
    net = create_network(BackboneConfig(name="resnet20"), 3)
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    mapped = load_network_weights(net, tmp_path / "m.pth", True, 10, order)
    assert mapped.head_loaded
    net.expand(4)  # the first task: original classes 3, 1, 4, 0
    assert torch.equal(net.head.weight, w[[3, 1, 4, 0]]) and torch.equal(
        net.head.bias, b[[3, 1, 4, 0]]
    )
    net.expand(2)  # later tasks start fresh
    assert not torch.equal(net.head.weight[4:], w[[5, 9]])
    # a classifier of another size is skipped, and said so
    other = create_network(BackboneConfig(name="resnet20"), 3)
    torch.save({**source.state_dict(), "fc.weight": w[:6], "fc.bias": b[:6]}, tmp_path / "s.pth")
    mapped = load_network_weights(other, tmp_path / "s.pth", True, 10, order)
    assert not mapped.head_loaded and "head skipped" in mapped.summary()
    other.expand(6)
    assert not torch.equal(other.head.weight, w[:6])


def _digits_cfg(weights: str, *overrides: str):
    data = {
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 4, "increment": 2},
        "backbone": {"name": "convnet4", "hidden": 16, "weights": weights},
        "learner": {"name": "finetune"},
        "train": {"epochs": 1, "batch_size": 64},
        "engine": {"progress": "none", "device": "cpu", "tensorboard": False},
    }
    return build_config(data, list(overrides))


def test_backbone_weights_in_a_run_start_from_the_file(tmp_path):
    source = _randomised("convnet4", 8, in_channels=1, hidden=16)
    state = {f"module.convnet.{k}": v for k, v in source.state_dict().items()}
    torch.save(state, tmp_path / "w.pth")
    parts = build_run(_digits_cfg(str(tmp_path / "w.pth")))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(parts.learner.network.backbone.eval()(x), source(x))
    # a partial file is refused with the key named, unless weights_strict is off
    state = {k: v for k, v in source.state_dict().items() if "stages.3" not in k}
    torch.save(state, tmp_path / "part.pth")
    with pytest.raises(ConfigError, match=r"backbone\.weights: .*missing 5: stages\.3\.0"):
        build_run(_digits_cfg(str(tmp_path / "part.pth")))
    build_run(_digits_cfg(str(tmp_path / "part.pth"), "backbone.weights_strict=false"))
