"""``cilkit import-weights``, ``cilkit run backbone.weights=...`` and ``cilkit tune --weights``."""

from __future__ import annotations

import json
import pickle

import torch
import yaml

from cilkit.backbones import create_backbone
from cilkit.backbones.weights import load_backbone_weights
from cilkit.cli.main import main
from cilkit.config import build_config
from cilkit.scenarios import resolve_class_order


def _backbone(name: str, seed: int, in_channels: int = 3, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_backbone(
        build_config({"backbone": {"name": name, **options}}).backbone, in_channels
    )
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in key else torch.randn_like(t))
    return model.eval()


def _one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1


def test_import_weights_converts_once(tmp_path, capsys):
    source = _backbone("resnet20", 0)
    state = {f"module.convnet.{k}": v for k, v in source.state_dict().items()}
    state["module.fc.weight"], state["module.fc.bias"] = torch.randn(10, 64), torch.randn(10)
    torch.save(state, tmp_path / "src.pth")
    out = tmp_path / "conv" / "w.safetensors"
    assert (
        main(
            ["import-weights", str(tmp_path / "src.pth"), "--backbone", "resnet20", "-o", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "module. + convnet. + cilkit" in printed and "classifier: [10, 64]" in printed
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["backbone"] == "resnet20" and record["missing"] == []
    assert record["mapped"]["stem.0.weight"] == "module.convnet.stem.0.weight"
    assert record["head"] == ["module.fc.weight", "module.fc.bias"]
    from safetensors.torch import load_file

    saved = load_file(str(out))
    assert torch.equal(saved["head.weight"], state["module.fc.weight"])
    target = _backbone("resnet20", 1)
    load_backbone_weights(target, out)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_import_weights_refuses_pickles_and_partial_files(tmp_path, capsys):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"x": Payload()}))
    args = ["--backbone", "resnet20", "-o", str(tmp_path / "o.safetensors")]
    assert main(["import-weights", str(tmp_path / "evil.pth"), *args]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "refused" in err and "evil.pth" in err and not marker.exists()

    state = _backbone("resnet20", 2).state_dict()
    del state["stages.1.2.bn1.weight"]
    torch.save(state, tmp_path / "part.pth")
    assert main(["import-weights", str(tmp_path / "part.pth"), *args]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "missing 1: stages.1.2.bn1.weight" in err
    assert not (tmp_path / "o.safetensors").exists()
    assert main(["import-weights", str(tmp_path / "part.pth"), *args, "--allow-partial"]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["missing"] == ["stages.1.2.bn1.weight"]


def _config(tmp_path, **scenario) -> str:
    data = {
        "seed": 3,
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 10, "increment": 10, **scenario},
        "backbone": {"name": "convnet4", "hidden": 16},
        "learner": {"name": "finetune"},
        "train": {"epochs": 1, "batch_size": 64},
        "engine": {"progress": "none", "device": "cpu", "tensorboard": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _model_file(tmp_path, predict: int | None = 3) -> str:
    """A convnet4 'trained elsewhere' whose classifier always predicts original class 3."""
    state = {
        f"module.{k}": v for k, v in _backbone("convnet4", 4, 1, hidden=16).state_dict().items()
    }
    if predict is not None:
        bias = torch.zeros(10)
        bias[predict] = 100.0
        state["module.fc.weight"], state["module.fc.bias"] = torch.zeros(10, 16), bias
    path = tmp_path / "ce.pth"
    torch.save(state, path)
    return str(path)


def test_run_starts_from_backbone_weights(tmp_path, capsys):
    cfg, weights = _config(tmp_path), _model_file(tmp_path)
    out = tmp_path / "run"
    args = ["run", "-c", cfg, f"backbone.weights={weights}", "--out", str(out), "--quiet"]
    assert main(args) == 0
    log = (out / "log.txt").read_text()
    assert f"weights {weights} (module. + cilkit): 24/24 backbone tensors" in log
    assert "head rows loaded" in log


def test_tune_with_imported_weights(tmp_path, capsys):
    cfg, weights = _config(tmp_path), _model_file(tmp_path)
    out = tmp_path / "tuned"
    code = main(
        ["tune", "--weights", weights, "-c", cfg, "--out", str(out), "--epochs", "1", "--ensemble"]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    # the file's classifier, reordered into the scenario's class order, is the 'before' model:
    # it predicts original class 3 for every image
    j = resolve_class_order(10, None, 1993).index(3)
    recall = summary["before"]["per_class_recall"]
    assert recall[j] == 100.0 and sum(r for i, r in enumerate(recall) if i != j) == 0
    assert {"before", "after", "ensemble"} <= set(summary) and summary["tuned_from"] == weights
    # a file without a classifier, and a scenario of several tasks, are refused in one line
    no_head = _model_file(tmp_path, predict=None)
    assert main(["tune", "--weights", no_head, "-c", cfg, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "no classifier" in err
    multi = _config(tmp_path, initial_increment=4, increment=2)
    assert main(["tune", "--weights", weights, "-c", multi, "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert _one_line(err) and "scenario.initial_increment=10" in err
