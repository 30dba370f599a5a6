"""``benchmarks/pycil_e2e.py`` hands PyCIL the data and schedule it claims to, and reads both
toolboxes' accuracy curves right. PyCIL itself is not here: a stand-in checkout with PyCIL's
module names records what the script gives it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from bench_scripts import load
from fixtures import write_tiny_imagenet

WNIDS = ("n01443537", "n01629819", "n01641577", "n01644900")


def test_milestones_scale_with_the_epochs():
    e2e = load("pycil_e2e")
    assert e2e.scaled((60, 120, 170), 200, 200) == [60, 120, 170]
    assert e2e.scaled((80, 120), 170, 17) == [8, 12]
    assert e2e.scaled((60, 120, 170), 200, 1) == []  # one epoch: no decay inside it


def test_pycil_curves_read_numpy_reprs_and_take_the_last():
    e2e = load("pycil_e2e")
    log = (
        "x => CNN top1 curve: [np.float64(80.1)]\n"
        "x => CNN top1 curve: [np.float64(80.1), np.float64(40.25)]\n"
        "x => NME top1 curve: [81.0, 45.5]\n"
    )
    assert e2e.pycil_curves(log) == {"CNN": [80.1, 40.25], "NME": [81.0, 45.5]}


def _stand_in_pycil(root: Path, cnn_curve: str = "np.float64(50.0), np.float64(25.0)") -> Path:
    """Files named as PyCIL's, whose ``train`` records the dataset and schedule it was given
    and logs ``cnn_curve`` as its accuracy after each task."""
    files = {
        "utils/__init__.py": "",
        "utils/data.py": "class iData:\n    pass\n",
        "utils/data_manager.py": "def _get_idata(name):\n    raise ValueError(name)\n",
        "models/__init__.py": "",
        "models/base.py": "def accuracy(y_pred, y_true, nb_old, increment=10):\n    return increment\n",
        "models/icarl.py": (
            "init_epoch = 200\nepochs = 170\ninit_milestones = [60, 120, 170]\n"
            "milestones = [80, 120]\nnum_workers = 8\n"
        ),
        "trainer.py": textwrap.dedent(
            """
            import json

            def train(args):
                import models.base as base
                import models.icarl as m
                import utils.data_manager as dm

                data = dm._get_idata(args["dataset"])
                data.download_data()
                seen = {
                    "args": args,
                    "train": [list(data.train_data.shape), str(data.train_data.dtype)],
                    "labels": sorted(set(data.train_targets.tolist())),
                    "test": list(data.test_data.shape),
                    "schedule": [m.init_epoch, m.epochs, m.init_milestones, m.milestones],
                    "workers": m.num_workers,
                    "accuracy_groups": base.accuracy(None, None, 0),
                    "train_trsf": [type(t).__name__ for t in data.train_trsf],
                }
                with open("seen.json", "w") as fh:
                    json.dump(seen, fh, default=str)
                print("x => CNN top1 curve: [CNN_CURVE]")
                print("x => NME top1 curve: [np.float64(60.0), np.float64(30.0)]")
            """
        ),
    }
    files["trainer.py"] = files["trainer.py"].replace("CNN_CURVE", cnn_curve)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_both_sides_run_on_the_same_data_and_schedule(tmp_path, monkeypatch):
    data = write_tiny_imagenet(tmp_path / "data", "tin", WNIDS, per_class=3, val_per_class=2)
    pycil = _stand_in_pycil(tmp_path / "PyCIL")
    out = tmp_path / "out"
    argv = [
        "pycil_e2e.py", "--pycil", str(pycil), "--data-root", str(data), "--out", str(out),
        "--epochs", "2", "--increment", "2", "--memory", "8", "--workers", "1",
        "--sides", "pycil,fp32",
    ]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    load("pycil_e2e").main()

    seen = json.loads((out / "pycil" / "seen.json").read_text())
    assert seen["train"] == [[12, 32, 32, 3], "uint8"]  # cilkit's 32x32 decode, HWC for PIL
    assert seen["labels"] == [0, 1, 2, 3] and seen["test"] == [8, 32, 32, 3]
    assert seen["schedule"] == [2, 2, [1], [1]] and seen["workers"] == 1
    assert seen["accuracy_groups"] == 2  # grouped by the increment, not PyCIL's fixed 10
    assert seen["train_trsf"] == ["RandomCrop", "RandomHorizontalFlip", "ColorJitter", "ToTensor"]
    assert seen["args"]["init_cls"] == 2 and seen["args"]["memory_size"] == 8

    record = json.loads((out / "pycil_e2e.json").read_text())
    pycil_row, cilkit_row = record["rows"]
    assert pycil_row["cnn_curve"] == [50.0, 25.0] and pycil_row["nme_curve"] == [60.0, 30.0]
    summary = json.loads((out / "cilkit-fp32" / "summary.json").read_text())
    assert (
        cilkit_row["cnn_curve"] == summary["task_accuracy"] and len(summary["task_accuracy"]) == 2
    )
    config = (out / "cilkit-fp32" / "config.yaml").read_text()
    assert "init_epochs: 2" in config and "amp: 'off'" in config
    assert "milestones: [1]" in config and "init_milestones: [1]" in config
    assert all(r["cpu_s"] > 0 and r["wall_s"] > 0 for r in record["rows"])


def test_a_side_that_logged_fewer_tasks_than_the_protocol_is_an_error(tmp_path, monkeypatch):
    data = write_tiny_imagenet(tmp_path / "data", "tin", WNIDS, per_class=3, val_per_class=2)
    pycil = _stand_in_pycil(tmp_path / "PyCIL", cnn_curve="np.float64(50.0)")  # 1 of 2 tasks
    argv = ["pycil_e2e.py", "--pycil", str(pycil), "--data-root", str(data)]
    argv += ["--out", str(tmp_path / "out"), "--increment", "2", "--sides", "pycil"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit, match="pycil: 1 tasks' accuracies found"):
        load("pycil_e2e").main()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sides", "pycil,fp16"], "--sides: unknown ['fp16']; known: pycil, fp32, bf16"),
        (["--sides", "pycil"], "--pycil: give a PyCIL checkout (the folder holding trainer.py)"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, monkeypatch, capsys, extra, message):
    argv = ["pycil_e2e.py", "--data-root", str(tmp_path), "--out", str(tmp_path / "out"), *extra]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit):
        load("pycil_e2e").main()
    assert message in capsys.readouterr().err


def test_a_side_that_fails_names_its_log(tmp_path, monkeypatch):
    data = write_tiny_imagenet(tmp_path / "data", "tin", WNIDS, per_class=3, val_per_class=2)
    pycil = _stand_in_pycil(tmp_path / "PyCIL")
    (pycil / "trainer.py").write_text("def train(args):\n    raise RuntimeError('broken')\n")
    out = tmp_path / "out"
    argv = ["pycil_e2e.py", "--pycil", str(pycil), "--data-root", str(data), "--out", str(out)]
    monkeypatch.setattr("sys.argv", [*argv, "--increment", "2", "--sides", "pycil"])
    with pytest.raises(SystemExit, match=r"failed \(exit 1\); see .*pycil\.log"):
        load("pycil_e2e").main()
    assert "RuntimeError: broken" in (out / "pycil.log").read_text()
