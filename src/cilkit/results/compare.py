"""Comparing runs: a summary table (text for ``cilkit compare``, rows for the web UI) and the
standalone HTML report (``cilkit report``).

* :func:`summary_table` (plain text) and :func:`summary_rows` (dicts, for the UI): one row per run
  with every classifier's average incremental accuracy, last accuracy and forgetting and, for
  long-tailed runs, many/medium/few-shot accuracy, GM, HM and lowest recall. Unfinished runs show
  the metrics of the tasks they finished.
* :func:`write_html_report`: the table, every figure of :mod:`cilkit.results.figures` and each
  run's config in one self-contained HTML file (figures embedded as PNG, no external CSS,
  scripts, fonts or links), written atomically.

Runs are read by :mod:`cilkit.results.runs`. Accuracies are in percent, forgetting in
percentage points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cilkit.results.runs import RunInfo, classifier_label, unique_names

LT_COLUMNS = (
    ("many_accuracy", "many"),
    ("medium_accuracy", "medium"),
    ("few_accuracy", "few"),
    ("gm_recall", "GM"),
    ("hm_recall", "HM"),
    ("lowest_recall", "LR"),
)
"""Long-tail summary keys and their column titles."""


def all_classifiers(runs: Sequence[RunInfo]) -> list[str]:
    """Every classifier any run reports, ``cnn`` first, then in order of appearance."""
    names: list[str] = []
    for run in runs:
        for name in run.classifiers:
            if name not in names:
                names.append(name)
    return sorted(names, key=lambda n: n != "cnn")


def _columns(runs: Sequence[RunInfo], classifiers: Sequence[str]) -> list[tuple[str, str, str]]:
    """(row key, column title, kind) for every column: text, int or number."""
    cols = [
        ("name", "run", "text"),
        ("learner", "learner", "text"),
        ("state", "state", "text"),
        ("tasks", "tasks", "int"),
    ]
    for c in classifiers:
        label = classifier_label(c)
        cols += [
            (f"{c}.avg_incremental_accuracy", f"{label} avg", "number"),
            (f"{c}.last_accuracy", f"{label} last", "number"),
            (f"{c}.forgetting", f"{label} fgt", "number"),
        ]
    if any(r.long_tailed for r in runs):
        cols += [(key, title, "number") for key, title in LT_COLUMNS]
    return cols


def summary_rows(
    runs: Sequence[RunInfo], classifiers: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One dict per run (for the UI): ``name``, ``learner``, ``dataset``, ``state``, ``error``,
    ``path``, ``tasks``, ``long_tailed``, per classifier ``C.avg_incremental_accuracy``,
    ``C.last_accuracy``, ``C.forgetting``, and the long-tail metrics (``many_accuracy``,
    ``medium_accuracy``, ``few_accuracy``, ``gm_recall``, ``hm_recall``, ``lowest_recall``;
    None unless the run is long-tailed). A missing value is None.

    Args:
        runs: the runs, in the order of the rows.
        classifiers: the classifiers to give (default: every one any run reports).
    """
    runs = unique_names(runs)
    names = all_classifiers(runs) if classifiers is None else list(classifiers)
    rows = []
    for run in runs:
        m = run.metrics
        row: dict[str, Any] = {
            "name": run.name,
            "learner": run.learner,
            "dataset": run.dataset,
            "state": run.state,
            "error": run.error if run.state == "failed" else None,
            "path": str(run.path),
            "tasks": run.num_tasks,
            "long_tailed": run.long_tailed,
        }
        for c in names:
            prefix = "" if c == "cnn" else f"{c}_"
            for key in ("avg_incremental_accuracy", "last_accuracy", "forgetting"):
                row[f"{c}.{key}"] = m.get(prefix + key)
        for key, _ in LT_COLUMNS:
            row[key] = m.get(key) if run.long_tailed else None
        rows.append(row)
    return rows


def _cell(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "number":
        return f"{value:.2f}"
    return str(value)


def table_cells(
    runs: Sequence[RunInfo], classifiers: Sequence[str] | None = None
) -> tuple[list[str], list[list[str]], list[str]]:
    """The table's column titles, its rows as formatted cells and each column's kind."""
    runs = unique_names(runs)
    names = all_classifiers(runs) if classifiers is None else list(classifiers)
    cols = _columns(runs, names)
    rows = summary_rows(runs, names)
    cells = [[_cell(row.get(key), kind) for key, _, kind in cols] for row in rows]
    return [title for _, title, _ in cols], cells, [kind for _, _, kind in cols]


def summary_table(runs: Sequence[RunInfo], classifiers: Sequence[str] | None = None) -> str:
    """A plain-text table, one row per run: name, learner, state, finished tasks, every
    classifier's average incremental accuracy (``avg``), last accuracy (``last``) and forgetting
    (``fgt``), and for long-tailed runs many/medium/few-shot accuracy, GM, HM and lowest recall
    (LR); a missing value is ``-``. Numbers have two decimals.

    Args:
        runs: the runs, in the order of the rows.
        classifiers: the classifiers to show (default: every one any run reports).
    """
    titles, cells, kinds = table_cells(runs, classifiers)
    widths = [max([len(t)] + [len(row[i]) for row in cells]) for i, t in enumerate(titles)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if kind == "text" else v.rjust(w)
            for v, w, kind in zip(values, widths, kinds, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(titles), rule, *(line(row) for row in cells)])


def state_lines(runs: Sequence[RunInfo]) -> list[str]:
    """One line per run that is not finished: its state, error or how to continue it."""
    lines = []
    for run in unique_names(runs):
        if run.state == "failed":
            lines.append(f"{run.name}: failed: {run.error}  ({run.path})")
        elif run.state == "interrupted":
            why = f" ({run.error})" if run.error else ""
            lines.append(f"{run.name}: interrupted{why}; continue with: {run.resume_command}")
        elif run.state in ("running", "empty"):
            lines.append(f"{run.name}: {run.state}  ({run.path})")
    return lines
