"""Comparing runs: states from what a run directory holds, the summary table against
summary.json, the comparison figures' data, and the self-contained HTML report."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil

import pytest
from figcheck import assert_legend_above
from pngcheck import assert_png
from runfixtures import hand_made, real_runs, tiny_config, train

from cilkit.errors import CheckpointError, CilkitError
from cilkit.metrics import forgetting_per_task
from cilkit.results.compare import summary_rows, summary_table
from cilkit.results.figures import (
    accuracy_curves_figure,
    accuracy_matrices_figure,
    comparison_figures,
    forgetting_figure,
    per_class_figure,
)
from cilkit.results.report_html import html_report, write_html_report
from cilkit.results.runs import list_runs, load_run, load_runs


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return real_runs(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="module")
def made(real, tmp_path_factory):
    return hand_made(real["finetune"], tmp_path_factory.mktemp("made"))


@pytest.fixture(scope="module")
def lt_pair(real, tmp_path_factory):
    """The long-tailed run and a copy with other per-class recalls (a second model)."""
    other = tmp_path_factory.mktemp("lt2") / "lt2"
    shutil.copytree(real["lt"], other)
    cfg = (other / "config.yaml").read_text().replace("name: cmp-lt-finetune", "name: lt-other")
    (other / "config.yaml").write_text(cfg)
    summary = json.loads((other / "summary.json").read_text())
    summary["per_class_recall"] = [10.0 * c for c in range(10)]
    (other / "summary.json").write_text(json.dumps(summary))
    return [load_run(real["lt"]), load_run(other)]


# ---- states -------------------------------------------------------------------------------------
def test_finished_runs_and_their_status_marker(real):
    for path in real.values():
        run = load_run(path)
        assert run.state == "finished" and run.error is None
        assert json.loads((path / "status.json").read_text())["state"] == "finished"
        assert run.summary == json.loads((path / "summary.json").read_text())
        assert len(run.records) == run.summary["num_tasks"]
    icarl = load_run(real["icarl"])
    assert icarl.name == "cmp-icarl" and icarl.learner == "icarl"
    assert icarl.classifiers == ["cnn", "nme"]
    assert icarl.config["memory"]["memory_size"] == 60


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("failed", "failed"),
        ("interrupted", "interrupted"),
        ("killed", "interrupted"),
        ("running", "running"),
        ("empty", "empty"),
        ("legacy", "interrupted"),
    ],
)
def test_states_of_hand_made_run_directories(made, name, state):
    run = load_run(made[name])
    assert run.state == state
    if state == "failed":
        assert run.error == "TrainingError: loss is NaN at task 0, epoch 2"
        assert run.resume_command is None
    if state == "interrupted":
        assert run.resume_command == f"cilkit run --resume {made[name]}"
        assert run.checkpoint == "task-000"
    if name in ("interrupted", "killed", "running", "legacy"):
        assert len(run.records) == 1 and run.summary is None


def test_a_run_killed_before_its_first_checkpoint_is_empty(made, tmp_path):
    d = tmp_path / "k"
    d.mkdir()
    shutil.copy(made["empty"] / "config.yaml", d / "config.yaml")
    status = json.loads((made["killed"] / "status.json").read_text())
    (d / "status.json").write_text(json.dumps(status))
    assert load_run(d).state == "empty"


def test_trainer_marks_a_stopped_then_resumed_and_a_failed_run(tmp_path):
    cfg = tiny_config("stop-finetune", "finetune", "train.epochs=1")
    out = train(cfg, tmp_path / "stop", stop_after_task=0)
    run = load_run(out)
    assert run.state == "interrupted" and run.error == "stopped after task 0"
    assert len(run.records) == 1 and run.checkpoint == "task-000"
    train(cfg, out, resume=True)
    assert load_run(out).state == "finished"

    bad = tiny_config(
        "bad",
        "finetune",
        "scenario.long_tail.imb_factor=1000",
        "scenario.long_tail.max_per_class=5",
        long_tail=True,
    )
    with pytest.raises(CilkitError) as err:
        train(bad, tmp_path / "bad")
    run = load_run(tmp_path / "bad")
    assert run.state == "failed" and run.error == str(err.value).splitlines()[0]
    assert "\n" not in run.error and "scenario.long_tail" in run.error


# ---- finding runs -------------------------------------------------------------------------------
def test_list_runs_finds_every_run_newest_first(real, made):
    root = real["icarl"].parent
    times = {"icarl": 3000, "finetune": 2000, "lt": 1000}
    for name, t in times.items():
        for f in real[name].iterdir():
            os.utime(f, (t, t))
        os.utime(real[name], (t, t))
    runs = list_runs(root)
    assert [r.path for r in runs] == [real["icarl"], real["finetune"], real["lt"]]
    assert [r.path for r in list_runs(real["lt"])] == [real["lt"]]  # a run directory itself
    both = load_runs([root, made["failed"], real["lt"]])  # folders expand; no run twice
    assert [r.path for r in both] == [*(r.path for r in runs), made["failed"]]


def test_not_a_run_directory_is_one_line_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path}: not a run directory")):
        load_run(tmp_path)
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match=re.escape(f"{missing}: no such run directory")):
        load_runs([missing])
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path}: not a run directory")):
        load_runs([tmp_path])
    assert list_runs(tmp_path) == []


def test_shared_names_are_made_unique(real, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(real["finetune"], a)
    shutil.copytree(real["finetune"], b)
    names = [r.name for r in load_runs([a, b])]
    assert names == ["cmp-finetune [a]", "cmp-finetune [b]"]


# ---- the table ----------------------------------------------------------------------------------
def _parse(table: str) -> list[dict[str, str]]:
    lines = table.splitlines()
    titles = re.split(r"\s{2,}", lines[0].strip())
    assert set(lines[1].replace(" ", "")) == {"-"}
    return [dict(zip(titles, re.split(r"\s{2,}", line.strip()), strict=True)) for line in lines[2:]]


def _num(cell: str) -> float | None:
    return None if cell == "-" else float(cell)


def _r2(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def test_summary_table_numbers_are_the_summaries(real, made):
    runs = load_runs([real["icarl"], real["finetune"], real["lt"], made["failed"]])
    rows = {row["run"]: row for row in _parse(summary_table(runs))}
    assert list(rows) == ["cmp-icarl", "cmp-finetune", "cmp-lt-finetune", "failed-cmp-finetune"]
    for key in ("icarl", "finetune", "lt"):
        s = json.loads((real[key] / "summary.json").read_text())
        row = rows[load_run(real[key]).name]
        assert row["state"] == "finished" and int(row["tasks"]) == s["num_tasks"]
        assert _num(row["CNN avg"]) == _r2(s["avg_incremental_accuracy"])
        assert _num(row["CNN last"]) == _r2(s["last_accuracy"])
        assert _num(row["CNN fgt"]) == _r2(s["forgetting"])  # None ("-") with one task
        assert _num(row["NME avg"]) == _r2(s.get("nme_avg_incremental_accuracy"))
        assert _num(row["NME last"]) == _r2(s.get("nme_last_accuracy"))
        assert _num(row["NME fgt"]) == _r2(s.get("nme_forgetting"))
    lt = json.loads((real["lt"] / "summary.json").read_text())
    for title, key in [("many", "many_accuracy"), ("GM", "gm_recall"), ("LR", "lowest_recall")]:
        assert _num(rows["cmp-lt-finetune"][title]) == _r2(lt[key])
        assert rows["cmp-icarl"][title] == "-"  # balanced digits: no long-tail columns filled
    failed = rows["failed-cmp-finetune"]
    assert failed["state"] == "failed" and failed["tasks"] == "0" and failed["CNN avg"] == "-"


def test_long_tail_columns_only_when_a_run_is_long_tailed(real):
    table = summary_table(load_runs([real["icarl"], real["finetune"]]))
    assert "many" not in table.splitlines()[0] and "NME avg" in table
    assert "NME" not in summary_table(load_runs([real["finetune"]]))


def test_summary_rows_and_partial_runs(real, made):
    icarl, interrupted = load_run(real["icarl"]), load_run(made["interrupted"])
    rows = summary_rows([icarl, interrupted])
    s = icarl.summary
    assert rows[0]["nme.last_accuracy"] == s["nme_last_accuracy"]
    assert rows[0]["cnn.forgetting"] == s["forgetting"] and rows[0]["many_accuracy"] is None
    first = interrupted.records[0]
    assert rows[1]["state"] == "interrupted" and rows[1]["tasks"] == 1
    assert rows[1]["cnn.last_accuracy"] == first["accuracy"]  # from its finished task
    assert rows[1]["nme.last_accuracy"] is None


# ---- figures ------------------------------------------------------------------------------------
def test_accuracy_curves_hold_every_classifier_of_every_run(real):
    runs = load_runs([real["icarl"], real["finetune"]])
    fig = accuracy_curves_figure(runs)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"cmp-icarl CNN", "cmp-icarl NME", "cmp-finetune CNN"}
    records = runs[0].records
    assert list(lines["cmp-icarl NME"].get_xdata()) == [r["num_seen_classes"] for r in records]
    assert list(lines["cmp-icarl NME"].get_ydata()) == [r["accuracy_nme"] for r in records]
    assert_legend_above(fig, ax)
    only_cnn = accuracy_curves_figure(runs, classifiers=["cnn"])
    assert len(only_cnn.axes[0].get_lines()) == 2


def test_accuracy_matrices_side_by_side(real):
    runs = load_runs([real["icarl"], real["finetune"], real["lt"]])
    fig = accuracy_matrices_figure(runs)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == [
        "cmp-icarl CNN",
        "cmp-icarl NME",
        "cmp-finetune CNN",
        "cmp-lt-finetune CNN",
    ]
    matrix = runs[0].summary["nme_accuracy_matrix"]
    data = panels[1].images[0].get_array()
    assert data[2][1] == pytest.approx(matrix[2][1]) and bool(data.mask[0][2])
    assert all(ax.get_xlim() == panels[0].get_xlim() for ax in panels)  # same cell size


def test_forgetting_bars_are_forgetting_per_task(real):
    runs = load_runs([real["icarl"], real["finetune"], real["lt"]])
    fig = forgetting_figure(runs)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    expected = [
        *forgetting_per_task(runs[0].summary["accuracy_matrix"]),
        *forgetting_per_task(runs[0].summary["nme_accuracy_matrix"]),
        *forgetting_per_task(runs[1].summary["accuracy_matrix"]),
    ]  # the one-task run has none
    assert heights == pytest.approx(expected)
    assert forgetting_figure(load_runs([real["lt"]])) is None


def test_per_class_accuracy_grouped_bars_sorted_by_frequency(lt_pair, real):
    fig = per_class_figure([*lt_pair, load_run(real["icarl"])])  # balanced iCaRL left out
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_width() < 0.5]  # not the shaded group regions
    counts = lt_pair[0].summary["train_class_counts"]
    order = sorted(range(10), key=lambda c: (-counts[c], c))
    for k, run in enumerate(lt_pair):
        recalls = run.summary["per_class_recall"]
        mine = sorted(bars[10 * k : 10 * (k + 1)], key=lambda p: p.get_x())
        assert [p.get_height() for p in mine] == pytest.approx([recalls[c] for c in order])
    assert bars[0].get_x() < bars[10].get_x() < bars[1].get_x()  # side by side per class
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(c) for c in order]
    assert per_class_figure([load_run(real["icarl"])]) is None


# ---- the HTML report ----------------------------------------------------------------------------
def test_html_report_is_self_contained(real, made, lt_pair, tmp_path):
    runs = load_runs([real["icarl"], real["finetune"], made["failed"], made["interrupted"]])
    runs += lt_pair
    out = tmp_path / "report" / "r.html"
    assert write_html_report(runs, out, title="My <comparison>") == out
    text = out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]  # atomic: no temporary left
    assert "<title>My &lt;comparison&gt;</title>" in text
    for banned in ("http://", "https://", "://", "<script", "<link", "@import", "url("):
        assert banned not in text, banned
    sources = re.findall(r'src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    keys = [f.key for f in comparison_figures(runs)]
    assert keys == ["accuracy", "accuracy_matrix", "forgetting", "long_tail", "per_class_accuracy"]
    assert text.count('<img src="data:image/png;base64,') == len(keys)
    for k, src in enumerate(sources):
        png = tmp_path / f"png{k}" / "f.png"
        png.parent.mkdir()
        png.write_bytes(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert_png(png)
    for run in runs:
        assert f"<b>{run.name}</b>" in text
    assert text.count("<details>") == len(runs)
    assert "kd_temperature: 2.0" in text  # iCaRL's config
    assert "memory_size: 60" in text
    assert "TrainingError: loss is NaN at task 0, epoch 2" in text
    assert f"cilkit run --resume {made['interrupted']}" in text
    table = text.split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    avg = f"{load_run(real['icarl']).summary['nme_avg_incremental_accuracy']:.2f}"
    assert f'<td class="number">{avg}</td>' in table


def test_html_report_of_runs_without_finished_tasks(made):
    text = html_report(load_runs([made["empty"], made["failed"]]))
    assert "<img" not in text and "No run has a finished task to plot." in text
