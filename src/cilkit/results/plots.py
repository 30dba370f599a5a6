"""PNG plots of incremental runs: accuracy curves, matrices, run comparisons, per-class accuracy.

Matplotlib is imported lazily inside each function and drawn through the Agg canvas directly
(``matplotlib.figure.Figure`` + ``FigureCanvasAgg``): pyplot is never imported and no global
state (backend, rcParams, figure manager) is touched, so plotting is safe in worker processes
and on machines without a display. Files are written atomically: a temporary file in the target
folder is renamed over ``path`` once complete.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_accuracy_curve",
    "plot_accuracy_matrix",
    "plot_comparison",
    "plot_per_class_accuracy",
]

_DPI = 120
_MAX_TICKS = 20


def _new_figure(width: float, height: float) -> Figure:
    """A figure bound to its own Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (temp file in the same folder, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=_DPI)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _as_values(values: Sequence[float | None], name: str) -> list[float]:
    """``values`` as floats, ``NaN`` for ``None`` (a gap in the line)."""
    try:
        return [math.nan if v is None else float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers or None: {exc}") from None


def _style_accuracy_axes(ax: Axes, xs: Sequence[int], title: str | None) -> None:
    """Labels, 0-100 y-range, grid, integer x-ticks at the seen-class counts and legend."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("Number of seen classes")
    ax.set_ylabel("Accuracy (%)")
    ax.set_ylim(0, 100)
    ticks = sorted(set(xs))
    if 0 < len(ticks) <= _MAX_TICKS:
        ax.set_xticks(ticks)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left")


def plot_accuracy_curve(
    num_seen_classes: Sequence[int],
    series: Mapping[str, Sequence[float | None]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Plot accuracy against the number of seen classes, one line per series.

    Args:
        num_seen_classes: number of classes seen after each task, e.g. ``[50, 60, .., 100]``.
        series: label -> accuracies in percent, one per task (e.g. ``{"CNN top-1": [...],
            "NME top-1": [...]}``); ``None`` leaves a gap.
        path: where to write the PNG; parent folders are created.
        title: optional title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if there is no task or series, or a series' length differs from the number of
            tasks.
    """
    xs = [int(x) for x in num_seen_classes]
    if not xs:
        raise ValueError("num_seen_classes is empty: nothing to plot")
    if not series:
        raise ValueError("no series to plot")
    lines = {}
    for label, values in series.items():
        ys = _as_values(values, f"series {label!r}")
        if len(ys) != len(xs):
            raise ValueError(f"series {label!r} has {len(ys)} values for {len(xs)} tasks")
        lines[str(label)] = ys
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot()
    for label, ys in lines.items():
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.5, label=label)
    _style_accuracy_axes(ax, xs, title)
    return _save_png(fig, path)


def plot_comparison(
    runs: Mapping[str, tuple[Sequence[int], Sequence[float | None]]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Plot several runs' accuracy curves on one axis (each run may have its own x values).

    Args:
        runs: run label -> ``(num_seen_classes, accuracies)`` in percent.
        path: where to write the PNG; parent folders are created.
        title: optional title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if there is no run, or a run's two sequences differ in length or are empty.
    """
    if not runs:
        raise ValueError("no runs to plot")
    curves = {}
    for label, (seen, values) in runs.items():
        xs = [int(x) for x in seen]
        ys = _as_values(values, f"run {label!r}")
        if not xs or len(xs) != len(ys):
            raise ValueError(
                f"run {label!r} has {len(ys)} accuracies for {len(xs)} class counts (need >= 1)"
            )
        curves[str(label)] = (xs, ys)
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot()
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.5, label=label)
    all_xs = [x for xs, _ in curves.values() for x in xs]
    _style_accuracy_axes(ax, all_xs, title)
    return _save_png(fig, path)


def plot_accuracy_matrix(
    matrix: Sequence[Sequence[float | None]] | Any,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Plot the accuracy matrix as a heat map with each value written in its cell.

    Row ``t`` is the evaluation after training task ``t``; column ``j`` the classes of task ``j``.
    Missing cells (``None``/``NaN``, typically the upper triangle) are left blank.

    Args:
        matrix: ``T x T`` accuracies in percent as nested lists (rows may be ragged), a numpy
            array or a tensor.
        path: where to write the PNG; parent folders are created.
        title: optional title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if the matrix has no row.
    """
    import numpy as np

    if hasattr(matrix, "detach"):  # torch tensor
        matrix = matrix.detach().cpu().numpy()
    rows = [_as_values(list(row), f"row {t}") for t, row in enumerate(matrix)]
    if not rows:
        raise ValueError("the accuracy matrix is empty: nothing to plot")
    num_rows, num_cols = len(rows), max(1, max(len(r) for r in rows))
    grid = np.full((num_rows, num_cols), np.nan)
    for t, row in enumerate(rows):
        grid[t, : len(row)] = row
    values = np.ma.masked_invalid(grid)

    side = max(num_rows, num_cols)
    cell = 0.55 if side <= 20 else max(0.22, 11.0 / side)
    fig = _new_figure(min(30.0, cell * num_cols + 2.5), min(30.0, cell * num_rows + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=100.0, aspect="equal")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.9)
    colorbar.set_label("Accuracy (%)")

    fontsize = max(3.0, min(9.0, 18.0 * cell))  # "100.0" fits in a cell
    for t in range(num_rows):
        for j in range(num_cols):
            v = grid[t, j]
            if math.isnan(v):
                continue
            colour = "white" if v < 60.0 else "black"  # viridis is dark below ~60%
            ax.text(j, t, f"{v:.1f}", ha="center", va="center", color=colour, fontsize=fontsize)

    step_r, step_c = (
        max(1, math.ceil(num_rows / _MAX_TICKS)),
        max(1, math.ceil(num_cols / _MAX_TICKS)),
    )
    ax.set_yticks(range(0, num_rows, step_r))
    ax.set_xticks(range(0, num_cols, step_c))
    ax.set_ylabel("trained up to task")
    ax.set_xlabel("evaluated on task")
    if title:
        ax.set_title(title)
    return _save_png(fig, path)


_SHOT_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}


def plot_per_class_accuracy(
    recalls: Sequence[float | None],
    train_counts: Sequence[int],
    path: str | os.PathLike[str],
    title: str | None = None,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> Path:
    """Plot per-class accuracy against training frequency, the usual long-tail diagnostic.

    Classes are sorted by their number of training images, most frequent first (ties by class
    id). Bars give each class's accuracy (recall) and are coloured by shot group, whose regions
    are shaded: many-shot (more than ``many_threshold`` training images), medium-shot and few-shot
    (fewer than ``few_threshold``), as in :func:`cilkit.metrics.shot_groups`. A line on a secondary
    log-scale axis gives the training counts. A class without test samples (``None``) has no bar
    and a grey cross at the bottom.

    Args:
        recalls: per-class accuracy in percent for classes ``0 .. C - 1``; ``None`` is missing.
        train_counts: number of training images of each class (``C`` entries, ``>= 0``).
        path: where to write the PNG; parent folders are created.
        title: optional title.
        many_threshold: classes with strictly more training images are many-shot.
        few_threshold: classes with strictly fewer training images are few-shot.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if there is no class, the two sequences differ in length, a count is negative
            or ``few_threshold > many_threshold``.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    from cilkit.metrics.long_tail import shot_groups

    values = _as_values(list(recalls), "recalls")
    counts = [int(c) for c in train_counts]
    if not values:
        raise ValueError("no class to plot")
    if len(counts) != len(values):
        raise ValueError(f"{len(values)} recalls but {len(counts)} training counts")
    groups = shot_groups(counts, many_threshold, few_threshold)  # validates counts, thresholds
    group_of = {c: name for name, members in groups.items() for c in members}

    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    xs = list(range(len(order)))
    ys = [values[c] for c in order]
    colours = [_SHOT_COLOURS[group_of[c]] for c in order]

    num = len(order)
    fig = _new_figure(min(16.0, max(7.0, 4.0 + 0.06 * num)), 4.5)
    ax = fig.add_subplot()
    handles: list[Any] = []

    # shaded group regions: sorted by count, each group is one contiguous run of positions
    for name in ("many", "medium", "few"):
        positions = [x for x, c in zip(xs, order, strict=True) if group_of[c] == name]
        if not positions:
            continue
        colour = _SHOT_COLOURS[name]
        ax.axvspan(min(positions) - 0.5, max(positions) + 0.5, color=colour, alpha=0.08, lw=0)
        handles.append(Patch(color=colour, alpha=0.8, label=f"{name}-shot ({len(positions)})"))

    shown = [x for x, y in zip(xs, ys, strict=True) if not math.isnan(y)]
    ax.bar(
        shown,
        [ys[x] for x in shown],
        width=0.8 if num <= 100 else 1.0,
        color=[colours[x] for x in shown],
        linewidth=0,
    )
    missing = [x for x, y in zip(xs, ys, strict=True) if math.isnan(y)]
    if missing:
        ax.plot(missing, [0.0] * len(missing), "x", color="grey", clip_on=False, zorder=3)
        handles.append(
            Line2D([], [], marker="x", color="grey", linestyle="", label="no test samples")
        )

    ax.set_xlim(-0.5, num - 0.5)
    ax.set_ylim(0, 100)
    ax.set_ylabel("Accuracy (%)")
    ax.grid(True, axis="y", alpha=0.3)
    if num <= 2 * _MAX_TICKS:
        ax.set_xticks(xs)
        ax.set_xticklabels([str(c) for c in order], fontsize=7 if num > _MAX_TICKS else None)
        ax.set_xlabel("Class id, sorted by number of training images")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Class rank by number of training images")

    twin = ax.twinx()
    sorted_counts = [float(counts[c]) for c in order]
    positive = any(c > 0 for c in sorted_counts)
    if positive:  # a log axis cannot show zero counts: they leave a gap
        twin.set_yscale("log")
        sorted_counts = [c if c > 0 else math.nan for c in sorted_counts]
    twin.plot(xs, sorted_counts, color="black", linewidth=1.2, marker="." if num <= 100 else None)
    twin.set_ylabel("Training images" + (" (log scale)" if positive else ""))
    handles.append(Line2D([], [], color="black", linewidth=1.2, label="training images"))

    ax.legend(handles=handles, loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    return _save_png(fig, path)
