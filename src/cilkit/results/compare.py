"""Comparing runs: their state, a summary table, comparison figures and a standalone HTML report.

The one home for reading several run directories side by side; ``cilkit compare``, ``cilkit
report`` and the web UI's Runs and Compare tabs call it.

* :func:`load_run` reads one run directory into a :class:`RunInfo`; :func:`list_runs` finds every
  run directory under a folder (newest first); :func:`load_runs` takes what a user typed (run
  directories or folders of runs).
* A run's **state** comes from what its directory holds: ``finished`` (``summary.json``),
  ``running`` (``status.json`` names a live process), ``interrupted`` (stopped by Ctrl-C or
  ``--stop-after-task``, or killed: its process is gone and it has a checkpoint or finished
  tasks; ``cilkit run --resume RUN_DIR`` continues it), ``failed`` (with its one-line error) or
  ``empty`` (nothing to show or resume yet: killed before its first task ended). Runs written
  before ``status.json`` existed are finished with a ``summary.json``, else interrupted when they
  have a checkpoint or a finished task, else empty.
* :func:`summary_table` (plain text) and :func:`summary_rows` (dicts, for the UI): one row per run
  with every classifier's average incremental accuracy, last accuracy and forgetting and, for
  long-tailed runs, many/medium/few-shot accuracy, GM, HM and lowest recall. Unfinished runs show
  the metrics of the tasks they finished.
* :func:`comparison_figures`: accuracy per task of every run's every classifier on one axis, the
  accuracy matrices side by side, forgetting per task as grouped bars, and for long-tailed runs
  per-class accuracy sorted by training frequency as grouped bars.
* :func:`write_html_report`: all of it in one self-contained HTML file (figures embedded as PNG,
  no external CSS, scripts, fonts or links), written atomically.

Accuracies are in percent, forgetting in percentage points. Nothing here imports pyplot; the
figures are drawn as in :mod:`cilkit.results.plots`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cilkit.errors import CheckpointError, CilkitError
from cilkit.results.plots import (
    _SHOT_COLOURS,
    _comparison_figure,
    _draw_matrix,
    _legend_above,
    _matrix_cell_inches,
    _matrix_grid,
    _new_figure,
    _png_bytes,
    _style_count_axis,
)
from cilkit.results.status import process_alive, read_status

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ComparisonFigure",
    "RunInfo",
    "comparison_figures",
    "list_runs",
    "load_run",
    "load_runs",
    "summary_rows",
    "summary_table",
    "write_html_report",
]

State = Literal["finished", "running", "interrupted", "failed", "empty"]
STATES: tuple[State, ...] = ("finished", "running", "interrupted", "failed", "empty")

LT_COLUMNS = (
    ("many_accuracy", "many"),
    ("medium_accuracy", "medium"),
    ("few_accuracy", "few"),
    ("gm_recall", "GM"),
    ("hm_recall", "HM"),
    ("lowest_recall", "LR"),
)
"""Long-tail summary keys and their column titles."""

LONG_TAIL_RATIO = 2.0
"""A run without a configured long-tail profile still counts as long-tailed when its largest
class has at least this many times the training images of its smallest (a naturally long-tailed
dataset); balanced sets such as digits or CIFAR sit near 1."""


@dataclass
class RunInfo:
    """One run directory as the CLI and the UI show it.

    Attributes:
        path: the run directory.
        name: a label for the run: the config's name (the learner's when the name is the default
            ``experiment``), with the learner added when the name does not contain it; made
            unique (the directory's name added) when several runs share it.
        state: ``finished``, ``running``, ``interrupted``, ``failed`` or ``empty``.
        error: the one-line error of a failed run (or the reason an interrupted one stopped).
        config: the resolved config (``config.yaml``) as a dict.
        records: the finished tasks' records (``metrics.jsonl``).
        summary: ``summary.json``, or None while the run is unfinished.
        modified: the newest modification time of the run's files (seconds since the epoch).
        started: when the run (or its last resume) started, from ``status.json``, if known.
        checkpoint: the newest checkpoint's name (``checkpoints/LATEST``), if any.
    """

    path: Path
    name: str
    state: State
    error: str | None
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None
    modified: float = 0.0
    started: str | None = None
    checkpoint: str | None = None
    _partial: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def learner(self) -> str:
        return str(_section(self.config, "learner").get("name", "?"))

    @property
    def dataset(self) -> str:
        return str(_section(self.config, "data").get("name", "?"))

    @property
    def metrics(self) -> dict[str, Any]:
        """``summary.json``, or for an unfinished run the same metrics over its finished tasks
        (empty without any)."""
        if self.summary is not None:
            return self.summary
        if self._partial is None:
            from cilkit.results.run_dir import summarize

            self._partial = summarize(self.records) if self.records else {}
        return self._partial

    @property
    def num_tasks(self) -> int:
        return len(self.records) if self.records else int(self.metrics.get("num_tasks", 0))

    @property
    def classifiers(self) -> list[str]:
        return list(self.metrics.get("classifiers") or [])

    @property
    def long_tailed(self) -> bool:
        """A long-tail profile is configured, or the training counts are imbalanced
        (:data:`LONG_TAIL_RATIO`)."""
        if _section(self.config, "scenario").get("long_tail") is not None:
            return True
        counts = [c for c in self.metrics.get("train_class_counts") or [] if c > 0]
        return bool(counts) and max(counts) >= LONG_TAIL_RATIO * min(counts)

    @property
    def resume_command(self) -> str | None:
        """How to continue an interrupted run."""
        return f"cilkit run --resume {self.path}" if self.state == "interrupted" else None


def _section(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


# ---- reading run directories ---------------------------------------------------------------------
def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run directory (it holds the ``config.yaml`` every run writes first)."""
    return (Path(path) / "config.yaml").is_file()


def load_run(path: str | Path) -> RunInfo:
    """Read one run directory.

    Raises:
        CheckpointError: ``path`` does not exist or is not a run directory, or one of its files
            is unreadable (one line naming it).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory")
    if not is_run_dir(path):
        what = "a file" if path.is_file() else "no config.yaml"
        raise CheckpointError(f"{path}: not a run directory ({what})")
    config = _read_config(path / "config.yaml")
    records = _read_records(path / "metrics.jsonl")
    summary = _read_json(path / "summary.json")
    status = read_status(path)
    checkpoint = _latest_checkpoint(path / "checkpoints")
    state, error = _state(summary, status, records, checkpoint)
    return RunInfo(
        path=path,
        name=_base_name(config, path),
        state=state,
        error=error,
        config=config,
        records=records,
        summary=summary,
        modified=_modified(path),
        started=(status or {}).get("started"),
        checkpoint=checkpoint,
    )


def list_runs(root: str | Path) -> list[RunInfo]:
    """Every run directory under ``root`` (``root`` itself when it is one), newest first.

    Folders inside a run directory and hidden folders are not searched. A run directory that
    cannot be read is listed as ``failed`` with the reason.

    Raises:
        CheckpointError: ``root`` is not a directory.
    """
    root = Path(root)
    if is_run_dir(root):
        return [load_run(root)]
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such directory")
    found: list[RunInfo] = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        if "config.yaml" in files:
            subdirs[:] = []  # runs do not nest
            try:
                found.append(load_run(folder))
            except CilkitError as err:
                found.append(_unreadable(Path(folder), str(err)))
    found.sort(key=lambda r: (-r.modified, str(r.path)))
    return unique_names(found)


def load_runs(paths: Iterable[str | Path]) -> list[RunInfo]:
    """The runs named by ``paths``, in order: each a run directory or a folder of runs (all of
    them, newest first); a run named twice is listed once.

    Raises:
        CilkitError: a path does not exist or holds no run (one line naming it), or no path.
    """
    runs: list[RunInfo] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        if is_run_dir(p):
            group = [load_run(p)]
        elif p.is_dir():
            group = list_runs(p)
            if not group:
                raise CheckpointError(
                    f"{p}: not a run directory (no config.yaml) and holds no run directory"
                )
        else:
            load_run(p)  # raises the one-line error for this path
            group = []
        for run in group:
            key = run.path.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(run)
    if not runs:
        raise CilkitError("no run directory given")
    return unique_names(runs)


def unique_names(runs: Sequence[RunInfo]) -> list[RunInfo]:
    """``runs`` with names made unique: a shared name gets the run directory's name added (and a
    number if that is shared too)."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    out, used = [], set()
    for r in runs:
        name = r.name if counts[r.name] == 1 else f"{r.name} [{r.path.name}]"
        base, k = name, 2
        while name in used:
            name, k = f"{base} #{k}", k + 1
        used.add(name)
        out.append(r if name == r.name else dataclasses.replace(r, name=name))
    return out


def _base_name(config: dict[str, Any], path: Path) -> str:
    name = str(config.get("name") or path.name)
    learner = str(_section(config, "learner").get("name", ""))
    if not learner or learner in name:
        return name
    return learner if name == "experiment" else f"{name} ({learner})"


def _state(
    summary: dict[str, Any] | None,
    status: dict[str, Any] | None,
    records: list[dict[str, Any]],
    checkpoint: str | None,
) -> tuple[State, str | None]:
    recorded = (status or {}).get("state")
    error = (status or {}).get("error")
    if summary is not None or recorded == "finished":
        return "finished", None
    if recorded == "failed":
        return "failed", error or "failed (no message recorded)"
    if recorded == "running" and process_alive(status or {}) is not False:
        return "running", None
    has_progress = bool(records) or checkpoint is not None
    if recorded == "interrupted":
        return "interrupted", error
    if has_progress and status is None:  # written before status.json existed
        return "interrupted", "no status.json: stopped, killed or still running"
    if has_progress:
        return "interrupted", "its process ended without a final state (killed?)"
    return "empty", None


def _unreadable(path: Path, error: str) -> RunInfo:
    return RunInfo(path, path.name, "failed", error, {}, [], None, modified=_modified(path))


def _read_config(path: Path) -> dict[str, Any]:
    from cilkit.config.loader import parse_yaml

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read ({getattr(err, 'strerror', err)})") from None
    return parse_yaml(text, str(path))


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise CheckpointError(f"{path} line {number}: not valid JSON") from None
        if not isinstance(record, dict):
            raise CheckpointError(f"{path} line {number}: not a task record")
        records.append(record)
    return records


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{path}: not readable JSON") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a run summary")
    return data


def _latest_checkpoint(folder: Path) -> str | None:
    """The name ``LATEST`` gives, else the newest-looking task checkpoint (unverified)."""
    try:
        name = (folder / "LATEST").read_text().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if name:
        return name
    names = sorted(p.stem for p in folder.glob("task-*.json")) if folder.is_dir() else []
    return names[-1] if names else None


def _modified(path: Path) -> float:
    times = [path.stat().st_mtime]
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "status.json", "log.txt"):
        try:
            times.append((path / name).stat().st_mtime)
        except OSError:
            pass
    return max(times)


# ---- the summary table ---------------------------------------------------------------------------
def _label(classifier: str) -> str:
    return classifier.upper()


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
        label = _label(c)
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


# ---- figures -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComparisonFigure:
    """One figure of a comparison: a key (``accuracy``, ``accuracy_matrix``, ``forgetting``,
    ``per_class_accuracy``), a caption and the matplotlib figure."""

    key: str
    title: str
    figure: Figure

    def png(self) -> bytes:
        return _png_bytes(self.figure)


def _series(runs: Sequence[RunInfo], classifiers: Sequence[str] | None) -> list[tuple]:
    """(run, classifier, label) for every classifier of every run with records."""
    out = []
    for run in runs:
        names = run.classifiers if classifiers is None else list(classifiers)
        for c in names:
            if c in run.classifiers and run.records:
                out.append((run, c, f"{run.name} {_label(c)}"))
    return out


def accuracy_curves_figure(
    runs: Sequence[RunInfo], classifiers: Sequence[str] | None = None
) -> Figure | None:
    """Accuracy after each task against the number of seen classes: one line per classifier
    of each run (``icarl CNN``, ``icarl NME``, ...). None when no run has a finished task."""
    curves = {}
    for run, c, label in _series(unique_names(runs), classifiers):
        key = "accuracy" if c == "cnn" else f"accuracy_{c}"
        curves[label] = (
            [r["num_seen_classes"] for r in run.records],
            [r.get(key) for r in run.records],
        )
    if not curves:
        return None
    return _comparison_figure(curves, title="Accuracy after each task")


def _matrices(runs: Sequence[RunInfo], classifiers: Sequence[str] | None) -> list[tuple]:
    out = []
    for run, c, label in _series(runs, classifiers):
        matrix = run.metrics.get(("" if c == "cnn" else f"{c}_") + "accuracy_matrix")
        if matrix:
            out.append((label, run, c, matrix))
    return out


def accuracy_matrices_figure(
    runs: Sequence[RunInfo], classifiers: Sequence[str] | None = None, max_columns: int = 3
) -> Figure | None:
    """The accuracy matrices of every classifier of each run as heat maps side by side (rows of
    ``max_columns``), on one colour scale. None when no run has a matrix."""
    panels = [
        (label, _matrix_grid(m)) for label, _, _, m in _matrices(unique_names(runs), classifiers)
    ]
    if not panels:
        return None
    side = max(max(grid.shape) for _, grid in panels)
    ncols = min(max_columns, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    cell = _matrix_cell_inches(side, side)
    cell = min(cell, (16.0 / ncols - 1.3) / side)  # at most 16 in wide before the colour bar
    width = max(6.0, ncols * (cell * side + 1.3) + 1.2)
    height = nrows * (cell * side + 1.3) + 0.6
    fig = _new_figure(width, height)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_axis_off()
            continue
        label, grid = panels[k]
        image = _draw_matrix(ax, grid, cell)  # values written while the cells fit them
        ax.set_xlim(-0.5, side - 0.5)  # one cell size in every panel
        ax.set_ylim(side - 0.5, -0.5)
        ax.set_title(label, fontsize=10)
    colorbar = fig.colorbar(image, ax=list(axes.flat), shrink=0.9)
    colorbar.set_label("Accuracy (%)")
    fig.suptitle("Accuracy matrices (row: trained up to task, column: evaluated on task)")
    return fig


def forgetting_figure(
    runs: Sequence[RunInfo], classifiers: Sequence[str] | None = None
) -> Figure | None:
    """Forgetting of each task but the last (best accuracy before the last task minus the final
    one, :func:`cilkit.metrics.forgetting_per_task`) as grouped bars, one bar per classifier of
    each run. None when no run has two tasks."""
    from matplotlib.ticker import MaxNLocator

    from cilkit.metrics import forgetting_per_task

    bars = []
    for label, _, _, matrix in _matrices(unique_names(runs), classifiers):
        values = forgetting_per_task(matrix)
        if values:
            bars.append((label, values))
    if not bars:
        return None
    num_tasks = max(len(v) for _, v in bars)
    fig = _new_figure(min(16.0, max(7.0, 3.0 + 0.25 * num_tasks * len(bars))), 4.5)
    ax = fig.add_subplot()
    width = 0.8 / len(bars)
    for k, (label, values) in enumerate(bars):
        xs = [j + (k - (len(bars) - 1) / 2) * width for j, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width=width, label=label, linewidth=0)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("Task")
    ax.set_ylabel("Forgetting (percentage points)")
    ax.set_xlim(-0.6, num_tasks - 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Forgetting per task after the last task")
    _legend_above(fig, ax, ax.get_legend_handles_labels()[0])
    return fig


_RUN_COLOURS = ("tab:purple", "tab:green", "tab:brown", "tab:cyan", "tab:olive", "tab:gray")
"""Bar colours of the runs in the per-class figure (not the shot groups' blue, orange, red)."""


def per_class_figure(runs: Sequence[RunInfo]) -> Figure | None:
    """Per-class accuracy after the last task of the long-tailed runs, classes sorted by their
    number of training images (most first), one bar per run for each class, with the shot
    groups shaded and the training counts as a line on the right-hand axis, as in
    :func:`cilkit.results.plots.plot_per_class_accuracy`. Runs are compared on the first
    long-tailed run's training counts; a run with other counts is left out. Best read with two
    or three runs. None when no run is long-tailed."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from cilkit.metrics.long_tail import shot_groups

    chosen = [
        r
        for r in unique_names(runs)
        if r.long_tailed
        and r.metrics.get("per_class_recall")
        and r.metrics.get("train_class_counts")
    ]
    if not chosen:
        return None
    counts = [int(c) for c in chosen[0].metrics["train_class_counts"]]
    chosen = [r for r in chosen if list(r.metrics["train_class_counts"]) == counts]
    scenario = _section(chosen[0].config, "scenario")
    many, few = int(scenario.get("many_threshold", 100)), int(scenario.get("few_threshold", 20))
    groups = shot_groups(counts, many, few)
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    position = {c: x for x, c in enumerate(order)}
    num = len(order)
    fig = _new_figure(min(16.0, max(7.0, 4.0 + 0.08 * num * len(chosen))), 4.5)
    ax = fig.add_subplot()
    handles: list[Any] = []
    for name in ("many", "medium", "few"):
        xs = [position[c] for c in groups[name]]
        if xs:
            colour = _SHOT_COLOURS[name]
            ax.axvspan(min(xs) - 0.5, max(xs) + 0.5, color=colour, alpha=0.08, lw=0)
            handles.append(Patch(color=colour, alpha=0.3, label=f"{name}-shot ({len(xs)})"))
    width = 0.8 / len(chosen)
    for k, run in enumerate(chosen):
        recalls = run.metrics["per_class_recall"]
        shown = [(x, recalls[c]) for x, c in enumerate(order) if recalls[c] is not None]
        offset = (k - (len(chosen) - 1) / 2) * width
        colour = _RUN_COLOURS[k % len(_RUN_COLOURS)]
        ax.bar(
            [x + offset for x, _ in shown],
            [v for _, v in shown],
            width=width,
            color=colour,
            linewidth=0,
        )
        handles.append(Patch(color=colour, label=run.name))
    ax.set_xlim(-0.5, num - 0.5)
    ax.set_ylim(0, 100)
    ax.set_ylabel("Accuracy (%)")
    ax.grid(True, axis="y", alpha=0.3)
    if num <= 40:
        ax.set_xticks(range(num))
        ax.set_xticklabels([str(c) for c in order], fontsize=8, rotation=90 if num > 20 else 0)
        ax.set_xlabel("Class id, sorted by number of training images")
    else:
        ax.set_xlabel("Class rank by number of training images")
    twin = ax.twinx()
    line = [float(counts[c]) for c in order]
    if _style_count_axis(twin, line):
        line = [c if c > 0 else math.nan for c in line]
    twin.plot(range(num), line, color="black", linewidth=1.2, marker="." if num <= 100 else None)
    handles.append(Line2D([], [], color="black", linewidth=1.2, label="training images"))
    fig.suptitle("Per-class accuracy after the last task, by training frequency")
    _legend_above(fig, ax, handles, fontsize=8)
    return fig


def comparison_figures(
    runs: Sequence[RunInfo], classifiers: Sequence[str] | None = None
) -> list[ComparisonFigure]:
    """Every comparison figure the runs allow, in report order: accuracy curves, accuracy
    matrices, forgetting per task, per-class accuracy (long-tailed runs)."""
    runs = unique_names(runs)
    made = [
        ("accuracy", "Accuracy after each task", accuracy_curves_figure(runs, classifiers)),
        ("accuracy_matrix", "Accuracy matrices", accuracy_matrices_figure(runs, classifiers)),
        ("forgetting", "Forgetting per task", forgetting_figure(runs, classifiers)),
        ("per_class_accuracy", "Per-class accuracy by training frequency", per_class_figure(runs)),
    ]
    return [ComparisonFigure(key, title, fig) for key, title, fig in made if fig is not None]


# ---- the HTML report -----------------------------------------------------------------------------
def write_html_report(
    runs: Sequence[RunInfo],
    out_path: str | Path,
    title: str | None = None,
    classifiers: Sequence[str] | None = None,
) -> Path:
    """Write the comparison as one self-contained HTML file (atomically): title, date, cilkit
    version, the runs and their states, the summary table, every figure as an embedded PNG, and
    each run's config in a collapsible section. It needs no network access to open.

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.
    """
    from cilkit.results.io import atomic_write_text
    from cilkit.results.report_html import html_report

    target = Path(out_path)
    atomic_write_text(target, html_report(runs, title=title, classifiers=classifiers))
    return target
