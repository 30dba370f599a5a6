"""The cilkit command: run, list, show-config, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cilkit.cli.main import main
from cilkit.config.loader import quickstart_config_text

REPO = Path(__file__).resolve().parents[2]


def test_embedded_quickstart_is_the_shipped_config():
    assert quickstart_config_text() == (REPO / "configs" / "quickstart.yaml").read_text()


@pytest.mark.parametrize("kind", ["learners", "backbones", "datasets", "buffers"])
def test_list(kind, capsys):
    assert main(["list", kind]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(len(line.split(None, 1)) == 2 for line in lines)


def test_list_shows_registered_names(capsys):
    main(["list", "learners"])
    out = capsys.readouterr().out
    for name in ("finetune", "replay", "joint", "icarl", "wa"):
        assert f"\n{name} " in "\n" + out


NO_PAPER = {"finetune", "joint", "proto_ltcil"}
"""Learners without a paper: the two bounds, and the seed's thesis code (named instead)."""


def test_every_learner_is_listed_with_its_paper(capsys):
    """`cilkit list learners` gives each method one complete sentence naming its paper (authors,
    venue and year), generated from the registry so a new method is checked when it registers."""
    import re

    from cilkit.learners import LEARNERS

    main(["list", "learners"])
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert set(lines) == set(LEARNERS.names())
    for name, description in lines.items():
        assert description.endswith("."), (name, description)
        if name not in NO_PAPER:
            assert re.search(r"\([^()]*(19|20)\d\d\)", description), (name, description)


def test_show_config(capsys):
    assert main(["show-config", "icarl"]) == 0
    out = capsys.readouterr().out
    assert "kd_temperature: float = 2.0" in out and "Rebuffi" in out
    assert main(["show-config", "optim"]) == 0
    assert "milestones" in capsys.readouterr().out


def test_show_config_unknown_is_one_line(capsys):
    assert main(["show-config", "icrl"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == err.strip().splitlines()[0] and "did you mean 'icarl'" in err


def test_run_with_overrides_writes_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "train.epochs=1",
            "scenario.increment=5",
            "scenario.initial_increment=5",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "average incremental accuracy" in printed and "task" in printed
    assert (out / "config.yaml").exists() and (out / "summary.json").exists()
    records = (out / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 2 and json.loads(records[1])["num_seen_classes"] == 10
    # the same --out again is refused, nothing is overwritten
    before = (out / "summary.json").read_bytes()
    assert main(["run", "--out", str(out), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "summary.json").read_bytes() == before


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "-c", "missing.yaml"], "config file not found"),
        (["run", "trian.epochs=1"], "trian: unknown key (did you mean 'train'?)"),
        (
            ["run", "scenario.initial_increment=20"],
            "command line: scenario.initial_increment=20: 20 classes in the first",
        ),
        (
            ["run", "data.name=cifar100", "data.root=/nonexistent", "data.download=false"],
            "/nonexistent",
        ),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, expected, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cilkit", *args, "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert expected in err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_stop_resume_and_overwrite_through_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train.epochs=1", "--out", str(out), "--quiet"]
    assert main(["run", *base, "--stop-after-task", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"cilkit run --resume {out}" in printed
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 5
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "-c", "x.yaml"]) == 2
    assert "drop -c/--out" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    # --overwrite replaces the old run entirely
    assert (
        main(
            [
                "run",
                "train.epochs=1",
                "scenario.increment=5",
                "scenario.initial_increment=5",
                "--out",
                str(out),
                "--quiet",
                "--overwrite",
            ]
        )
        == 0
    )
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in (out / "checkpoints").glob("*.json")) == [
        "task-000.json",
        "task-001.json",
    ]


def test_overrides_may_follow_options(tmp_path):
    assert (
        main(
            [
                "run",
                "--out",
                str(tmp_path / "r"),
                "--quiet",
                "train.epochs=1",
                "scenario.increment=5",
                "scenario.initial_increment=5",
            ]
        )
        == 0
    )
    with pytest.raises(SystemExit):
        main(["run", "--bogus", "train.epochs=1"])


def test_empty_config_file_is_one_line(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "cilkit", "run", "-c", "empty.yaml", "--out", "r"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: empty.yaml: the file is empty")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_version_and_help_do_not_import_torch():
    code = (
        "import sys\n"
        "from cilkit.cli.main import main\n"
        "for argv in (['--version'], ['--help'], ['run', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    from cilkit import __version__

    assert proc.stdout.startswith(f"cilkit {__version__}\n")
    assert proc.stdout.strip().endswith("False")


def test_version_matches_the_package_metadata():
    from importlib.metadata import version

    from cilkit import __version__

    assert version("cilkit") == __version__


def test_show_config_unknown_name_lists_what_it_takes(capsys):
    assert main(["show-config", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not a learner, backbone, loss, sampler or config section" in err
    assert "unknown learner" not in err
    for name in ("ldam", "resnet32", "class_aware", "optim"):  # each kind is accepted
        assert main(["show-config", name]) == 0
    capsys.readouterr()


def test_a_closed_output_pipe_does_not_stop_the_run(tmp_path):
    """`cilkit run ... | head -1`: the run goes on with its output dropped and succeeds."""
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "train.epochs=2", "scenario.increment=5"]
    args += ["scenario.initial_increment=5", "engine.progress=none"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cilkit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as `head -1` does
    err = proc.stderr.read()
    assert proc.wait() == 0, err
    assert first.startswith("quickstart: icarl on digits")
    assert "Broken pipe" not in err and "Traceback" not in err
    assert (out / "summary.json").exists()
    assert "summary (accuracies in %)" in (out / "log.txt").read_text()


def test_ui_without_its_extra_is_one_line(monkeypatch, capsys):
    """``cilkit ui`` without gradio says which extra to install, without a traceback."""
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    monkeypatch.delitem(sys.modules, "cilkit.ui.page", raising=False)
    assert main(["ui", "--runs", "unused"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: cilkit ui needs the ui extra (gradio is missing): pip install 'cilkit[ui]'"
    ]
