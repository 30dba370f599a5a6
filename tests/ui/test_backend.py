"""The web page's behaviour without a browser: the generated form, the runs table on run
directories in every state, comparison, inference, and launching, stopping and resuming real
``cilkit run`` processes. No gradio needed."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from runfixtures import hand_made, real_runs

from cilkit.config import build_config
from cilkit.config.loader import quickstart_config
from cilkit.config.schema import POLYMORPHIC_SECTIONS
from cilkit.errors import CheckpointError, CilkitError
from cilkit.inference import MAX_FILE_BYTES, ImageInputError, Predictor, read_image
from cilkit.registry import get_registry
from cilkit.results.run_dir import RunDirectory
from cilkit.ui.backend import Backend
from cilkit.ui.form import NONE_CHOICE, form_fields, form_to_config, form_to_tree
from cilkit.ui.runs import RunLauncher, run_progress


def _quickstart():
    return quickstart_config()


# ---- the form ------------------------------------------------------------------------------------
def test_every_registered_option_is_in_the_form():
    """Generated from the registries: each learner's, backbone's, loss's and sampler's own
    options appear under its name, so a new one is in the form the moment it registers."""
    fields = form_fields(_quickstart())
    ids = {f.id for f in fields}
    base = {
        "learner": "learner",
        "backbone": "backbone",
        "loss": "learner.loss",
        "sampler": "train.sampler",
    }
    bases = {kind: cls for cls, kind in POLYMORPHIC_SECTIONS.items()}
    for kind, prefix in base.items():
        registry = get_registry(kind)
        name_field = next(f for f in fields if f.key == f"{prefix}.name")
        assert set(registry.names()) <= set(name_field.choices)
        shared = {f.name for f in dataclasses.fields(bases[kind])}
        for entry in registry.entries():
            for f in dataclasses.fields(entry.config_cls or bases[kind]):
                if f.name not in shared:
                    assert f"{entry.name}:{prefix}.{f.name}" in ids, (kind, entry.name, f.name)
        for name in shared - {"name"}:  # the shared options once, whatever the name
            assert any(i.startswith(f"{prefix}.{name}") for i in ids), (kind, name)


def test_the_untouched_form_is_its_start_config():
    start = _quickstart()
    assert form_to_config(form_fields(start), {}) == start
    # From the bare defaults, whose learner section is the base class until it is resolved.
    assert form_to_config(form_fields(None), {}) == build_config({})


def test_the_form_switches_classes_sections_and_blank_numbers():
    fields = form_fields(_quickstart())
    cfg = form_to_config(
        fields,
        {
            "learner.name": "lucir",
            "lucir:learner.K": 3,
            "icarl:learner.kd_temperature": 9.0,  # another learner's option: not used
            "learner.rebalance": True,
            "learner.rebalance.sampler.name": "class_aware",
            "class_aware:learner.rebalance.sampler.samples_per_class": 4,
            "scenario.long_tail": True,
            "scenario.long_tail.imb_factor": 10,
            "optim.milestones": "10, 20",
            "train.init_epochs": "",
            "learner.loss.drw_start_epoch": "",
        },
    )
    assert cfg.learner.name == "lucir" and cfg.learner.K == 3
    assert not hasattr(cfg.learner, "kd_temperature")
    assert cfg.learner.rebalance.sampler.samples_per_class == 4
    assert cfg.scenario.long_tail.imb_factor == 10.0
    assert cfg.optim.milestones == (10, 20)
    assert cfg.train.init_epochs is None and cfg.learner.loss.drw_start_epoch is None
    off = form_to_tree(fields, {"learner.rebalance": False, "scenario.long_tail": False})
    assert off["learner"]["rebalance"] is None and off["scenario"]["long_tail"] is None
    none = form_to_tree(
        fields, {"learner.rebalance": True, "learner.rebalance.sampler.name": NONE_CHOICE}
    )
    assert none["learner"]["rebalance"]["sampler"] is None


def test_a_bad_form_value_is_one_line_naming_the_key(tmp_path):
    backend = Backend(tmp_path / "runs")
    text, error = backend.config_yaml({"train.epochs": -1})
    assert text == "" and error == "the UI form: train.epochs: must be >= 0"
    _, error = backend.config_yaml({"optim.milestones": "ten"})
    assert error == "the UI form: optim.milestones: expected integers separated by commas"
    message, run_dir = backend.launch({"train.epochs": 2.5})
    assert run_dir is None and message.startswith("not started: ") and "train.epochs" in message
    yaml_text, error = backend.config_yaml({"train.epochs": 2})
    assert error == "" and "epochs: 2" in yaml_text
    assert backend.save_yaml({"train.epochs": 2}).parent == backend.root / ".ui"


# ---- runs in every state -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    real = real_runs(root)
    made = hand_made(real["finetune"], root / "made")
    return root, real, made


def test_the_runs_table_shows_every_state_and_its_message(folder):
    root, real, made = folder
    backend = Backend(root)
    rows = {r[0]: r for r in backend.run_rows()}
    assert rows["icarl"][1:5] == ["finished", "icarl", "digits", "3/3"]
    assert rows["made/failed"][1] == "failed"
    assert rows["made/failed"][6] == "TrainingError: loss is NaN at task 0, epoch 2"
    assert rows["made/running"][1] == "running"
    assert rows["made/interrupted"][1] == "interrupted"
    assert rows["made/interrupted"][6].endswith("resumable")
    assert rows["made/killed"][1] == "interrupted"
    assert rows["made/empty"][1] == "empty"
    assert backend.finished_runs() == [n for n in rows if rows[n][1] == "finished"]
    assert backend.stop("made/running") == ("running: not a running process started from this page")
    assert "only an interrupted run resumes" in backend.resume("icarl")


def test_nothing_outside_the_runs_folder_is_read(folder, tmp_path):
    root, _, _ = folder
    backend = Backend(root)
    for name in ("..", "../elsewhere", "/etc", "icarl/../../x"):
        with pytest.raises(CilkitError, match="not inside the runs folder"):
            backend.path_of(name)
    assert "not inside the runs folder" in backend.predict("../x", None, ["a.png"])


def test_compare_figures_summary_and_report(folder):
    root, _, _ = folder
    backend = Backend(root)
    figures = backend.figures(["icarl", "finetune"])
    assert {"accuracy", "accuracy_matrix", "forgetting", "epochs"} <= set(figures)
    assert {"long_tail", "per_class_accuracy"} <= set(backend.figures(["lt"]))
    assert "long_tail" not in backend.figures(["icarl"])
    table = backend.summary_html(["icarl", "finetune"])
    assert "cmp-icarl" in table and "cmp-finetune" in table and "<table" in table
    path = backend.export_report(["icarl", "finetune"])
    assert path.parent == root / ".ui" / "reports"
    text = path.read_text()
    assert "cmp-icarl" in text and "<img" in text and "<script" not in text
    with pytest.raises(CilkitError, match="choose one or more runs"):
        backend.export_report([])


def test_epoch_records_progress_and_resume_repeats(folder, tmp_path):
    _, real, _ = folder
    records = RunDirectory(real["icarl"]).read_epochs()
    assert [(r["task_id"], r["epoch"]) for r in records[:4]] == [(0, 1), (0, 2), (0, 3), (1, 1)]
    assert {"loss", "train_accuracy", "terms", "lr", "num_tasks", "epochs"} <= set(records[0])
    assert set(records[3]["terms"]) == {"ce", "kd"}
    done = run_progress(real["icarl"])
    assert done["run_fraction"] == 1.0 and done["tasks_done"] == 3 and done["num_tasks"] == 3
    # A resumed run repeats an epoch: the last record counts; a half-written line is skipped.
    d = tmp_path / "partial"
    d.mkdir()
    lines = [
        {
            "task_id": 0,
            "num_tasks": 4,
            "phase": "train",
            "label": "task 1/4",
            "epoch": e,
            "epochs": 4,
            "loss": float(e),
        }
        for e in (1, 2, 3, 2, 3)
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"task_id": 0, "epo'
    (d / "epochs.jsonl").write_text(text)
    got = RunDirectory(d).read_epochs()
    assert [r["epoch"] for r in got] == [1, 2, 3]
    p = run_progress(d)
    assert p["task_fraction"] == 0.75 and p["run_fraction"] == pytest.approx(0.75 / 4)


# ---- inference -----------------------------------------------------------------------------------
def test_inference_top5_names_and_bad_files(folder, tmp_path):
    from PIL import Image

    root, real, _ = folder
    backend = Backend(root)
    assert backend.checkpoints("icarl")[0] == "task-002"
    good = tmp_path / "white.png"
    Image.new("RGB", (33, 21), (255, 255, 255)).save(good)
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(rgba)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    out = backend.predict("icarl", "task-002", [str(good), str(rgba), str(text)])
    assert out.count("class='cilkit-answer'") == 2
    assert out.count("<caption>CNN</caption>") == 2 and "<caption>NME</caption>" in out
    assert "notes.txt: not an image (no image format recognised)" in out
    # An earlier task's checkpoint knows only that task's classes.
    early = Predictor.from_run(real["icarl"], "task-001")  # after 4 + 3 classes
    assert early.num_seen == 7 and len(early.class_names) == 7
    (answer,) = early.predict_files([good], k=10)
    assert len(answer.top["cnn"]) == 7
    assert {name for name, _ in answer.top["cnn"]} <= set(early.class_names)
    assert sum(p for _, p in answer.top["cnn"]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(CheckpointError, match="no task checkpoint 'task-009'"):
        Predictor.from_run(real["icarl"], "task-009")
    with pytest.raises(CheckpointError, match="no task checkpoint"):
        Predictor.from_run(real["icarl"], "../x")


def test_read_image_converts_like_the_dataset_and_refuses_bad_input(tmp_path, monkeypatch):
    from PIL import Image

    colour = tmp_path / "c.png"
    Image.new("RGB", (16, 10), (200, 100, 0)).save(colour)
    grey = read_image(colour, (1, 8, 8), lazy=False)
    assert grey.shape == (1, 8, 8) and grey.dtype.is_floating_point is False
    rgb = read_image(colour, (3, 32, 32), lazy=False)
    assert rgb.shape == (3, 32, 32) and rgb[:, 0, 0].tolist() == [200, 100, 0]
    assert read_image(colour, (3, 24, 24), lazy=True).shape == (3, 24, 24)
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 1024)
    monkeypatch.setattr("cilkit.inference.MAX_FILE_BYTES", 1000)
    with pytest.raises(ImageInputError, match=r"big.png: .* larger than the 0 MiB limit"):
        read_image(big, (3, 8, 8), lazy=False)
    monkeypatch.setattr("cilkit.inference.MAX_FILE_BYTES", MAX_FILE_BYTES)
    monkeypatch.setattr("cilkit.inference.MAX_PIXELS", 100)
    with pytest.raises(ImageInputError, match=r"c.png: 16 x 10 pixels is larger"):
        read_image(colour, (3, 8, 8), lazy=False)
    monkeypatch.setattr("cilkit.inference.MAX_PIXELS", 40_000_000)
    noisy = tmp_path / "noisy.png"
    Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48).save(noisy)
    broken = tmp_path / "broken.png"
    broken.write_bytes(noisy.read_bytes()[: noisy.stat().st_size // 2])
    with pytest.raises(ImageInputError, match=r"^broken.png: cannot decode the image"):
        read_image(broken, (3, 8, 8), lazy=False)


# ---- launching, stopping and resuming real runs --------------------------------------------------
def _wait(predicate, what: str, timeout: float = 600.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "status.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return None


def test_launch_stop_resume_through_the_cli(tmp_path):
    launcher = RunLauncher(tmp_path / "runs", env={"OMP_NUM_THREADS": "1"})
    backend = Backend(tmp_path / "runs", launcher=launcher)
    values = {
        "name": "ui-test",
        "scenario.initial_increment": 5,
        "scenario.increment": 5,
        "train.epochs": 60,
        "engine.tensorboard": False,
    }
    message, run_dir = backend.launch(values)
    assert message == f"started {run_dir.name}" and run_dir.parent == backend.root
    name = backend.name_of(run_dir)
    assert (backend.root / ".ui" / f"{run_dir.name}.yaml").exists()
    _wait(lambda: RunDirectory(run_dir).read_epochs(), "the first epoch")
    assert "epoch" in backend.progress_html() and "<progress" in backend.progress_html()
    assert backend.stop(name).startswith(f"sent Ctrl-C to {run_dir.name}")
    launcher.launched[run_dir].process.wait(timeout=600)
    assert _status(run_dir) == "interrupted" and not (run_dir / "summary.json").exists()
    row = next(r for r in backend.run_rows() if r[0] == name)
    assert row[1] == "interrupted" and row[6].endswith("resumable")
    assert backend.resume(name) == f"resumed {name}"
    assert "already running" in backend.resume(name)
    launcher.launched[run_dir].process.wait(timeout=600)
    assert _status(run_dir) == "finished" and (run_dir / "summary.json").exists()
    assert "resum" in (run_dir / "log.txt").read_text().lower()
    # A config the CLI refuses: the console's last line is the run's message.
    bad = launcher.launch("train: {epochs: -3}\n", "bad")
    bad.process.wait(timeout=600)
    row = next(r for r in backend.run_rows() if r[0] == bad.run_dir.name)
    assert row[1] == "failed" and "train.epochs" in row[6]
