"""The timm backbone: any timm model by name, local weights read safely and checked, what was
loaded recorded, and the run's preprocessing taken from the model."""

from __future__ import annotations

import hashlib
import io
import json
import sys

import pytest
import torch

pytest.importorskip("timm")
import timm  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from cilkit.backbones import create_network  # noqa: E402
from cilkit.config import build_config  # noqa: E402
from cilkit.data.base import create_dataset  # noqa: E402
from cilkit.engine.build import model_transform  # noqa: E402
from cilkit.engine.trainer import Trainer  # noqa: E402
from cilkit.errors import ConfigError  # noqa: E402

KWARGS = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 24, "num_heads": 3}


def _backbone(**options):
    data = {"name": "timm", "model": "vit_tiny_patch16_224", "kwargs": dict(KWARGS)}
    data.update(options)
    return build_config({"backbone": data}).backbone


def _pretrained_file(tmp_path, suffix=".safetensors", num_classes=7, **kwargs):
    """A 'pre-trained' model in timm's own layout, with a classifier of another class count."""
    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **KWARGS, **kwargs)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path, state


def test_weights_load_from_safetensors_and_torch_files(tmp_path):
    path, state = _pretrained_file(tmp_path)
    net = create_network(_backbone(pretrained_path=str(path)), 3)
    model = net.backbone.model
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert "head.weight" in state and isinstance(model.head, torch.nn.Identity)
    prov = net.backbone.provenance
    assert prov["tag"] == "file" and prov["weights"] == str(path)
    assert prov["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    pth, _ = _pretrained_file(tmp_path, ".pth")
    other = create_network(_backbone(pretrained_path=str(pth)), 3).backbone.provenance
    assert other["tensors_sha256"] == prov["tensors_sha256"]  # same tensors, other format
    assert other["weights_sha256"] != prov["weights_sha256"]
    random = create_network(_backbone(), 3).backbone.provenance
    assert random["tag"] == "random" and random["tensors_sha256"] != prov["tensors_sha256"]


def test_bad_weights_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="no file .*missing.safetensors"):
        create_network(_backbone(pretrained_path=str(tmp_path / "missing.safetensors")), 3)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="pretrained_path: .*junk.pth: damaged or not a PyTorch"):
        create_network(_backbone(pretrained_path=str(junk)), 3)
    path, _ = _pretrained_file(tmp_path)
    wider = dict(KWARGS, embed_dim=48)
    with pytest.raises(ConfigError, match="does not fit timm model") as err:
        create_network(_backbone(pretrained_path=str(path), kwargs=wider), 3)
    assert "\n" not in str(err.value)
    # timm loads non-strictly when the classifier changes; a deeper model must still refuse
    deeper = dict(KWARGS, depth=3)
    with pytest.raises(ConfigError, match=r"Missing keys \(blocks\.2\.") as err:
        create_network(_backbone(pretrained_path=str(path), kwargs=deeper), 3)
    assert "\n" not in str(err.value)
    shallower = dict(KWARGS, depth=1)
    with pytest.raises(ConfigError, match=r"Unexpected keys \(blocks\.1\."):
        create_network(_backbone(pretrained_path=str(path), kwargs=shallower), 3)
    partly = create_network(
        _backbone(pretrained_path=str(path), kwargs=deeper, weights_strict=False), 3
    )
    assert len(partly.backbone.model.blocks) == 3


def test_unknown_model_and_option_errors():
    with pytest.raises(ConfigError, match="timm has no model 'vit_tinyy.*did you mean"):
        create_network(_backbone(model="vit_tinyy_patch16_224"), 3)
    with pytest.raises(ConfigError, match="kwargs.num_classes: is set by cilkit"):
        _backbone(kwargs={"num_classes": 3})
    with pytest.raises(ConfigError, match="pretrained or pretrained_path, not both"):
        _backbone(pretrained=True, pretrained_path="x.safetensors")
    with pytest.raises(ConfigError, match="backbone.kwargs.*expected mapping"):
        build_config({"backbone": {"name": "timm", "kwargs": [1, 2]}})


def test_nothing_is_downloaded_without_pretrained(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr("timm.models._builder.load_pretrained", refuse)
    net = create_network(_backbone(), 3)
    assert net.feature_dim == 24


def test_missing_timm_extra_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match=r"needs the timm package: pip install -e '\.\[timm\]'"):
        create_network(_backbone(), 3)


def test_kwargs_take_dotted_overrides():
    cfg = build_config(
        {"backbone": {"name": "timm", "kwargs": dict(KWARGS)}},
        ["backbone.kwargs.depth=1", "backbone.kwargs.drop_path_rate=0.1"],
    )
    assert cfg.backbone.kwargs["depth"] == 1 and cfg.backbone.kwargs["drop_path_rate"] == 0.1
    assert len(create_network(cfg.backbone, 3).backbone.model.blocks) == 1


def _run_cfg(*overrides):
    data = {
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 5, "increment": 5},
        "backbone": {"name": "timm", "model": "vit_tiny_patch16_224", "kwargs": dict(KWARGS)},
        "learner": {"name": "finetune"},
        "train": {"epochs": 1, "batch_size": 64},
        "engine": {"progress": "none"},
    }
    return build_config(data, list(overrides))


def test_preprocessing_comes_from_the_model_unless_overridden():
    cfg = _run_cfg()
    dataset = create_dataset(cfg.data)
    net = create_network(cfg.backbone, 1)
    t = model_transform(cfg, dataset, net.backbone)
    assert t.input_size == 16 and t.interpolation == "bicubic" and t.crop_pct == 0.9
    assert t.preset.resized_crop and t.preset.crop_scale == (0.05, 1.0)  # the ptm preset
    x = torch.full((1, 1, 8, 8), 255, dtype=torch.uint8)
    assert t.eval(x).shape == (1, 1, 16, 16)
    assert torch.allclose(t.eval(x), torch.tensor(1.0))  # (1 - 0.5) / 0.5: the model's stats
    cfg = _run_cfg(
        "data.input_size=8", "data.mean=[0.0]", "data.std=[1.0]", "data.augment.preset=digits"
    )
    t = model_transform(cfg, dataset, net.backbone)
    assert t.input_size == 8 and not t.preset.resized_crop
    assert torch.equal(t.eval(x), torch.ones(1, 1, 8, 8))  # stored size: pixels untouched
    with pytest.raises(ConfigError, match="data.mean: 3 values for 1-channel images"):
        model_transform(_run_cfg("data.mean=[0.1,0.2,0.3]"), dataset, net.backbone)
    t = model_transform(_run_cfg("data.crop_pct=0.5"), dataset, net.backbone)
    assert t.crop_pct == 0.5  # the key over the model's 0.9: the centre 4 x 4 of 8 x 8, resized
    ramp = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    centre = model_transform(
        _run_cfg("data.input_size=4", "data.crop_pct=0.5"), dataset, net.backbone
    )
    expected = (ramp[..., 2:6, 2:6].float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(centre.eval(ramp), expected)
    with pytest.raises(ConfigError, match="crop_pct.*must be in \\(0, 1\\]"):
        _run_cfg("data.crop_pct=1.5")


def test_a_run_records_what_it_loaded(tmp_path):
    path, _ = _pretrained_file(tmp_path, num_classes=3)
    printed = io.StringIO()
    run_dir = tmp_path / "run"
    Trainer(_run_cfg(f"backbone.pretrained_path={path}"), run_dir, log=printed).fit()
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"backbone: model vit_tiny_patch16_224, tag file, weights {path}" in printed.getvalue()
    assert sha in (run_dir / "log.txt").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["backbone_model"] == "vit_tiny_patch16_224"
    assert summary["backbone_weights_sha256"] == sha
