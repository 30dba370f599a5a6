"""PNG plots of incremental runs: accuracy curves, accuracy matrices and run comparisons.

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

__all__ = ["plot_accuracy_curve", "plot_accuracy_matrix", "plot_comparison"]

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
