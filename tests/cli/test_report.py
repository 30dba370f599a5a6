"""`cilkit compare` and `cilkit report`: the table with each run's state, the HTML file, and
one-line errors (exit code 2) for bad input."""

from __future__ import annotations

import json

import pytest
from runfixtures import hand_made, tiny_config, train

from cilkit.cli.main import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished finetune run (1 epoch a task) and a failed and an interrupted one beside it."""
    root = tmp_path_factory.mktemp("runs")
    done = train(tiny_config("cli-finetune", "finetune", "train.epochs=1"), root / "done")
    return {"root": root, "done": done, **hand_made(done, root / "made")}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_compare_prints_the_table_and_states(runs, capsys):
    assert main(["compare", str(runs["done"]), str(runs["failed"]), str(runs["killed"])]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["run", "learner", "state", "tasks"]
    row = next(line for line in lines if line.startswith("cli-finetune "))
    summary = json.loads((runs["done"] / "summary.json").read_text())
    assert row.split()[2:6] == [
        "finished",
        "3",
        f"{summary['avg_incremental_accuracy']:.2f}",
        f"{summary['last_accuracy']:.2f}",
    ]
    assert "failed-cli-finetune: failed: TrainingError: loss is NaN at task 0, epoch 2" in out
    assert f"continue with: cilkit run --resume {runs['killed']}" in out


def test_compare_a_folder_lists_every_run_in_it(runs, capsys):
    assert main(["compare", str(runs["root"])]) == 0
    out = capsys.readouterr().out
    for name in ("cli-finetune", "failed-", "interrupted-", "killed-", "running-", "empty-"):
        assert f"\n{name}" in out


def test_report_writes_html_and_refuses_to_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    args = ["report", str(runs["done"]), str(runs["interrupted"]), "-o", str(out)]
    assert main(args) == 0
    assert f"wrote {out} (2 run(s))" in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and "cli-finetune" in text
    assert text.count('<img src="data:image/png;base64,') >= 3
    out.write_text("keep me")
    assert main(args) == 2
    err = _error_line(capsys)
    assert err == f"error: -o {out} already exists; pass --overwrite to replace it"
    assert out.read_text() == "keep me"
    assert main([*args, "--overwrite", "--title", "T"]) == 0
    assert "<title>T</title>" in out.read_text()


@pytest.mark.parametrize("command", ["compare", "report"])
def test_a_path_that_is_not_a_run_is_one_line_naming_it(runs, tmp_path, capsys, command):
    extra = ["-o", str(tmp_path / "r.html")] if command == "report" else []
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main([command, str(runs["done"]), str(plain), *extra]) == 2
    err = _error_line(capsys)
    assert err.startswith(f"error: {plain}: not a run directory")
    missing = tmp_path / "missing"
    assert main([command, str(missing), *extra]) == 2
    assert _error_line(capsys) == f"error: {missing}: no such run directory"
    assert not (tmp_path / "r.html").exists()


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "compare" in out and "report" in out
