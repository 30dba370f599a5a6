"""Figures comparing runs: accuracy per task of every run's every classifier on one axis, the
accuracy matrices side by side, forgetting per task as grouped bars, for long-tailed runs
per-class accuracy sorted by training frequency, and per-epoch training curves (loss and train
accuracy, from ``epochs.jsonl``). Drawn as in :mod:`cilkit.results.plots`, without pyplot.
The HTML report and the web UI's Compare tab show them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
from cilkit.results.runs import RunInfo, classifier_label, config_section, unique_names

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
                out.append((run, c, f"{run.name} {classifier_label(c)}"))
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
    scenario = config_section(chosen[0].config, "scenario")
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
    matrices, forgetting per task, and for long-tailed runs the long-tail metrics per task and
    per-class accuracy."""
    runs = unique_names(runs)
    made = [
        ("accuracy", "Accuracy after each task", accuracy_curves_figure(runs, classifiers)),
        ("accuracy_matrix", "Accuracy matrices", accuracy_matrices_figure(runs, classifiers)),
        ("forgetting", "Forgetting per task", forgetting_figure(runs, classifiers)),
        ("long_tail", "Long-tail metrics after each task", long_tail_curves_figure(runs)),
        ("per_class_accuracy", "Per-class accuracy by training frequency", per_class_figure(runs)),
    ]
    return [ComparisonFigure(key, title, fig) for key, title, fig in made if fig is not None]


def epoch_curves_figure(runs: Sequence[RunInfo]) -> Figure | None:
    """Loss and train accuracy after every epoch of the main training (``epochs.jsonl``), one
    line per run over the run's epochs in order, dotted lines where a task starts. None when
    no run has an epoch record yet (runs written before ``epochs.jsonl`` existed have none)."""
    from matplotlib.ticker import MaxNLocator

    from cilkit.results.run_dir import RunDirectory

    series = []
    for run in unique_names(runs):
        records = [r for r in RunDirectory(run.path).read_epochs() if r.get("phase") == "train"]
        if records:
            series.append((run.name, records))
    if not series:
        return None
    fig = _new_figure(11.0, 4.0)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for name, records in series:
        xs = list(range(1, len(records) + 1))
        loss_ax.plot(xs, [r.get("loss") for r in records], linewidth=1.5, label=name)
        acc_ax.plot(xs, [r.get("train_accuracy") for r in records], linewidth=1.5, label=name)
    name, records = series[0]
    starts = [i + 0.5 for i, r in enumerate(records) if i and r.get("epoch") == 1]
    for ax, title in ((loss_ax, "Training loss"), (acc_ax, "Train accuracy (%)")):
        for x in starts:
            ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (all tasks in order; dotted: a new task)")
        ax.grid(alpha=0.3)
    handles, _ = loss_ax.get_legend_handles_labels()
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(4, len(handles)),
        frameon=False,
        fontsize=8,
    )
    return fig


_LT_PANELS = (
    ("Many / medium / few-shot accuracy (%)", ("many_accuracy", "medium_accuracy", "few_accuracy")),
    ("GM, HM and lowest recall (%)", ("gm_recall", "hm_recall", "lowest_recall")),
)


def long_tail_curves_figure(runs: Sequence[RunInfo]) -> Figure | None:
    """The CNN's long-tail metrics after each task of the long-tailed runs: many, medium and
    few-shot accuracy in one panel, GM, HM and lowest recall in the other, against the number
    of seen classes. None when no long-tailed run has a finished task."""
    chosen = [r for r in unique_names(runs) if r.long_tailed and r.records]
    if not chosen:
        return None
    fig = _new_figure(11.0, 4.0)
    axes = fig.subplots(1, 2)
    styles = (("-", "o"), ("--", "s"), (":", "^"))
    for ax, (title, keys) in zip(axes, _LT_PANELS, strict=True):
        for i, run in enumerate(chosen):
            xs = [r["num_seen_classes"] for r in run.records]
            for key, (style, marker) in zip(keys, styles, strict=True):
                ys = [r.get(key) for r in run.records]
                ys = [math.nan if y is None else y for y in ys]
                short = key.split("_")[0]
                ax.plot(
                    xs,
                    ys,
                    linestyle=style,
                    marker=marker,
                    markersize=4,
                    color=f"C{i}",
                    label=f"{run.name} {short}",
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("Number of seen classes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    return fig
