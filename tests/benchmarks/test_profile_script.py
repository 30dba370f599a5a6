"""``benchmarks/profile_run.py`` times every part of a real run, in wall and CPU seconds, and the
parts it calls top-level do not overlap (they sum to no more than the whole run)."""

from __future__ import annotations

import json
from pathlib import Path

from bench_scripts import load

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def test_every_part_is_timed_and_the_parts_fit_in_the_run(tmp_path, capsys):
    profile = load("profile_run")
    out, report = tmp_path / "run", tmp_path / "profile.json"
    profile.main(["-c", str(CONFIG), "train.epochs=1", "--out", str(out), "--json", str(report)])

    data = json.loads(report.read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert data["summary"]["avg_incremental_accuracy"] == summary["avg_incremental_accuracy"]
    parts = [label.strip() for label, _, _ in profile.PARTS]
    assert set(parts) | {"other", "whole run", "summary"} == set(data)
    for key in ("wall", "cpu"):
        timed = [data[p][key] for p in parts]
        assert all(t >= 0 for t in timed)
        for needed in ("training (main and stages)", "evaluation", "exemplar selection"):
            assert data[needed][key] > 0, (needed, key)  # iCaRL's parts were reached
        frozen = data["frozen modules' forward"][key]  # iCaRL's teacher, inside training
        assert 0 < frozen <= data["training (main and stages)"][key]
        # "other" is the run minus the top-level parts: negative if two of them overlapped
        assert data["other"][key] >= -0.02 * data["whole run"][key]
    assert "whole run" in capsys.readouterr().out


def test_a_nested_part_counts_only_while_its_parent_runs():
    profile = load("profile_run")
    totals, cpu = {"child": 0.0}, {"child": 0.0}
    running = {"parent": 0, "child": 0}
    child = profile._timed(lambda: sum(range(20000)), totals, cpu, "child", running, "parent")
    child()  # e.g. DER's frozen extractors at evaluation: not the training's teacher time
    assert totals["child"] == 0.0
    running["parent"] = 1
    child()
    assert totals["child"] > 0.0 and running["child"] == 0
