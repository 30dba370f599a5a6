"""PNG plots of incremental runs: accuracy curves, matrices, run comparisons, per-class accuracy.

Matplotlib is imported lazily inside each function and drawn through the Agg canvas directly
(``matplotlib.figure.Figure`` + ``FigureCanvasAgg``): pyplot is never imported and no global
state (backend, rcParams, figure manager) is touched, so plotting is safe in worker processes
and on machines without a display. Each figure is rendered to memory and written with
:func:`cilkit.results.io.atomic_write_bytes` (temporary file, fsync, rename), so a PNG is never
half-written and gets the same permissions as the rest of the run directory.

Every plot is built by a private ``_*_figure`` function that returns the
:class:`~matplotlib.figure.Figure` (the tests inspect it) and saved by the public ``plot_*``
function. Legends sit above the plot area, never over the data; the title, when given, is the
figure's title above the legend.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cilkit.results.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend

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


def _png_bytes(fig: Figure) -> bytes:
    """``fig`` rendered as PNG bytes in memory."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _save_png(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically, with the usual ``0666 & ~umask`` mode."""
    target = Path(path)
    data = _png_bytes(fig)  # render first: a failure writes nothing
    atomic_write_bytes(target, data)
    return target


def _nice_step(count: int, max_ticks: int = _MAX_TICKS) -> int:
    """The smallest step of 1, 2 or 5 times a power of ten that leaves at most ``max_ticks``."""
    need = max(1, math.ceil(count / max_ticks))
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            if factor * magnitude >= need:
                return factor * magnitude
        magnitude *= 10


def _legend_above(fig: Figure, ax: Axes, handles: Sequence[Any], fontsize: float = 9) -> Legend:
    """A frameless legend in a row just above ``ax`` (outside the data), wrapped to fit the figure.

    The constrained layout makes room for it between the figure title and the axes. When one row
    is wider than the figure, the legend wraps into more rows and the figure grows by their height
    so that the plot area keeps its size.
    """
    renderer = fig.canvas.get_renderer()
    max_width = 0.95 * fig.get_figwidth() * fig.dpi
    legend, ncols = None, len(handles)
    for ncols in range(len(handles), 0, -1):
        legend = ax.legend(
            handles=list(handles),
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncols=ncols,
            fontsize=fontsize,
            frameon=False,
            borderaxespad=0.3,
            columnspacing=1.5,
        )
        if ncols == 1 or legend.get_window_extent(renderer).width <= max_width:
            break
    assert legend is not None
    rows = math.ceil(len(handles) / ncols)
    if rows > 1:
        width, height = fig.get_size_inches()
        fig.set_size_inches(width, height + (rows - 1) * 1.6 * fontsize / 72)
    return legend


def _as_values(values: Sequence[float | None], name: str) -> list[float]:
    """``values`` as floats, ``NaN`` for ``None`` (a gap in the line)."""
    try:
        return [math.nan if v is None else float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers or None: {exc}") from None


def _style_accuracy_axes(fig: Figure, ax: Axes, xs: Sequence[int], title: str | None) -> None:
    """Labels, 0-100 y-range, grid, integer x-ticks at the seen-class counts, legend and title."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("Number of seen classes")
    ax.set_ylabel("Accuracy (%)")
    ax.set_ylim(0, 100)
    ticks = sorted(set(xs))
    if 0 < len(ticks) <= _MAX_TICKS:
        ax.set_xticks(ticks)
    else:  # round steps (10, 20, 50, ..), not 15 or 25
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    handles = ax.get_legend_handles_labels()[0]
    if handles:
        _legend_above(fig, ax, handles)


def _accuracy_curve_figure(
    num_seen_classes: Sequence[int],
    series: Mapping[str, Sequence[float | None]],
    title: str | None = None,
) -> Figure:
    """The figure of :func:`plot_accuracy_curve` (same arguments, no file)."""
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
    _style_accuracy_axes(fig, ax, xs, title)
    return fig


def plot_accuracy_curve(
    num_seen_classes: Sequence[int],
    series: Mapping[str, Sequence[float | None]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Plot accuracy against the number of seen classes, one line per series.

    The legend is a row above the plot area, so it never hides a point.

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
    return _save_png(_accuracy_curve_figure(num_seen_classes, series, title), path)


def _comparison_figure(
    runs: Mapping[str, tuple[Sequence[int], Sequence[float | None]]],
    title: str | None = None,
) -> Figure:
    """The figure of :func:`plot_comparison` (same arguments, no file)."""
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
    _style_accuracy_axes(fig, ax, all_xs, title)
    return fig


def plot_comparison(
    runs: Mapping[str, tuple[Sequence[int], Sequence[float | None]]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Plot several runs' accuracy curves on one axis (each run may have its own x values).

    The legend is above the plot area and wraps into more rows (the figure grows) when the run
    labels do not fit in one.

    Args:
        runs: run label -> ``(num_seen_classes, accuracies)`` in percent.
        path: where to write the PNG; parent folders are created.
        title: optional title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if there is no run, or a run's two sequences differ in length or are empty.
    """
    return _save_png(_comparison_figure(runs, title), path)


# a cell's text must be at least this large to be read; smaller cells show only their colour
_MIN_CELL_FONTSIZE = 7.0
_MAX_FIGURE_SIDE = 30.0  # inches


def _matrix_cell_format(cell_inches: float) -> tuple[str | None, float]:
    """How to write a value in a cell ``cell_inches`` wide: format and font size in points.

    ``"100.0"`` needs about 3.2 font sizes of width and ``"100"`` about 2; a cell too small for
    either at :data:`_MIN_CELL_FONTSIZE` gets no text (``None``).
    """
    cell_points = 72.0 * cell_inches
    for fmt, width_in_fontsizes in (("{:.1f}", 3.2), ("{:.0f}", 2.0)):
        fontsize = min(9.0, cell_points / width_in_fontsizes)
        if fontsize >= _MIN_CELL_FONTSIZE:
            return fmt, fontsize
    return None, 0.0


def _accuracy_matrix_figure(
    matrix: Sequence[Sequence[float | None]] | Any,
    title: str | None = None,
) -> Figure:
    """The figure of :func:`plot_accuracy_matrix` (same arguments, no file)."""
    grid = _matrix_grid(matrix)
    num_rows, num_cols = grid.shape
    cell = _matrix_cell_inches(num_rows, num_cols)
    # room for the labels and colour bar (2.5 x 1.5 in); at least 6 x 4 in so a title fits
    width = min(_MAX_FIGURE_SIDE, max(6.0, cell * num_cols + 2.5))
    height = min(_MAX_FIGURE_SIDE, max(4.0, cell * num_rows + 1.5))
    cell = min(cell, (width - 2.5) / num_cols, (height - 1.5) / num_rows)  # after the size caps
    fig = _new_figure(width, height)
    ax = fig.add_subplot()
    image = _draw_matrix(ax, grid, cell)
    colorbar = fig.colorbar(image, ax=ax, shrink=0.9)
    colorbar.set_label("Accuracy (%)")
    if title:
        ax.set_title(title)
    return fig


def _matrix_grid(matrix: Sequence[Sequence[float | None]] | Any) -> Any:
    """An accuracy matrix (nested lists, possibly ragged, an array or a tensor) as a float
    array with ``NaN`` for missing cells."""
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
    return grid


def _matrix_cell_inches(num_rows: int, num_cols: int) -> float:
    """The side of a heat-map cell before any figure-size cap."""
    side = max(num_rows, num_cols)
    return 0.55 if side <= 20 else max(0.22, 11.0 / side)


def _draw_matrix(ax: Axes, grid: Any, cell: float) -> Any:
    """Draw ``grid`` (from :func:`_matrix_grid`) on ``ax`` as a 0-100 heat map with each value
    written in its cell when ``cell`` inches leave room; returns the image (for a colour bar)."""
    import numpy as np

    num_rows, num_cols = grid.shape
    values = np.ma.masked_invalid(grid)
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=100.0, aspect="equal")
    fmt, fontsize = _matrix_cell_format(cell)
    if fmt is not None:
        for t in range(num_rows):
            for j in range(num_cols):
                v = grid[t, j]
                if math.isnan(v):
                    continue
                colour = "white" if v < 60.0 else "black"  # viridis is dark below ~60%
                ax.text(
                    j, t, fmt.format(v), ha="center", va="center", color=colour, fontsize=fontsize
                )

    ax.set_yticks(range(0, num_rows, _nice_step(num_rows)))
    ax.set_xticks(range(0, num_cols, _nice_step(num_cols)))
    ax.set_ylabel("Trained up to task")
    ax.set_xlabel("Evaluated on task")
    return image


def plot_accuracy_matrix(
    matrix: Sequence[Sequence[float | None]] | Any,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Plot the accuracy matrix as a heat map with each value written in its cell.

    Row ``t`` is the evaluation after training task ``t``; column ``j`` the classes of task ``j``.
    Missing cells (``None``/``NaN``, typically the upper triangle) are left blank. Values are
    written with one decimal while the cells are large enough (up to about 35 tasks), then
    rounded to whole percents; cells too small for legible text (more than about 140 tasks,
    once the figure has reached its maximum size) show only their colour. Task ticks are thinned
    to round steps (1, 2, 5, 10, ..).

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
    return _save_png(_accuracy_matrix_figure(matrix, title), path)


_SHOT_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}


def _plain_number(value: float, _pos: int | None = None) -> str:
    """A tick label without scientific notation: ``5``, ``131``, ``1000``, ``0.5``."""
    return f"{value:.0f}" if value >= 1 and value == round(value) else f"{value:g}"


def _style_count_axis(twin: Axes, counts: Sequence[float]) -> bool:
    """Scale and label the training-count axis; return whether it is logarithmic.

    Log scale only when the positive counts span at least a decade, with ticks at 1, 2 and 5
    times the powers of ten; otherwise a linear axis from zero.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    positive = [c for c in counts if c > 0]
    log = bool(positive) and max(positive) >= 10 * min(positive)
    if log:
        twin.set_yscale("log")
        twin.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        twin.yaxis.set_minor_formatter(NullFormatter())
    else:
        twin.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        twin.set_ylim(0, max(counts) * 1.05 if max(counts) > 0 else 1)
    twin.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    twin.set_ylabel("Training images" + (" (log scale)" if log else ""))
    return log


def _per_class_figure(
    recalls: Sequence[float | None],
    train_counts: Sequence[int],
    title: str | None = None,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> Figure:
    """The figure of :func:`plot_per_class_accuracy` (same arguments, no file)."""
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
        crowded = num > _MAX_TICKS  # small, upright labels would touch: turn them
        ax.set_xticklabels(
            [str(c) for c in order],
            fontsize=8 if crowded else None,
            rotation=90 if crowded else 0,
        )
        ax.set_xlabel("Class id, sorted by number of training images")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set_xlabel("Class rank by number of training images")

    twin = ax.twinx()
    sorted_counts = [float(counts[c]) for c in order]
    if _style_count_axis(twin, sorted_counts):  # a log axis cannot show zero: those leave a gap
        sorted_counts = [c if c > 0 else math.nan for c in sorted_counts]
    twin.plot(xs, sorted_counts, color="black", linewidth=1.2, marker="." if num <= 100 else None)
    handles.append(Line2D([], [], color="black", linewidth=1.2, label="training images"))

    if title:
        fig.suptitle(title)
    _legend_above(fig, ax, handles, fontsize=8)
    return fig


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
    (fewer than ``few_threshold``), as in :func:`cilkit.metrics.shot_groups`. A black line on the
    right-hand axis gives the training counts. A class without test samples (``None``) has no bar
    and a grey cross at the bottom. The legend is a row above the plot area, never over a bar.

    The count axis is labelled with plain numbers (``5, 10, 20, 50, 100, ..``), never in
    scientific notation. It is logarithmic only when the counts span at least a decade (a real
    long tail, e.g. 5 to 500), where a linear axis would squash the tail to the floor. A narrower
    span (a balanced or nearly balanced set, e.g. 131 to 137 images) gets a linear axis from zero:
    the line's height is then proportional to the count, so a nearly flat profile looks nearly
    flat instead of a zoomed-in staircase that reads like a steep tail. Zero counts lie on that
    linear axis but leave a gap on a log one.

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
    figure = _per_class_figure(recalls, train_counts, title, many_threshold, few_threshold)
    return _save_png(figure, path)
