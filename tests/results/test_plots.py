"""PNG plots: valid files, edge cases (one task, missing cells), atomic writes, readable layout."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from figcheck import (
    assert_legend_above,
    assert_no_overlapping_labels,
    draw,
    extent,
    inside,
    visible_tick_labels,
)
from pngcheck import PNG_SIGNATURE, assert_png  # noqa: F401

from cilkit.results.plots import (
    _accuracy_curve_figure,
    _accuracy_matrix_figure,
    _comparison_figure,
    plot_accuracy_curve,
    plot_accuracy_matrix,
    plot_comparison,
)


def test_accuracy_curve(tmp_path: Path) -> None:
    out = plot_accuracy_curve(
        [50, 60, 70, 80, 90, 100],
        {
            "CNN top-1": [82.0, 75.5, 70.1, 66.0, 61.2, 58.3],
            "NME top-1": [81.0, 76.0, 71.5, 67.9, 63.0, 60.2],
        },
        tmp_path / "curve.png",
        title="B50 Inc10",
    )
    assert out == tmp_path / "curve.png"
    assert_png(out)


def test_accuracy_curve_one_task_and_gap(tmp_path: Path) -> None:
    assert_png(plot_accuracy_curve([10], {"CNN top-1": [91.0]}, tmp_path / "one.png"))
    other = tmp_path / "gap"
    assert_png(plot_accuracy_curve([10, 20, 30], {"x": [90.0, None, 70.0]}, other / "gap.png"))


def test_accuracy_curve_many_tasks(tmp_path: Path) -> None:
    xs = list(range(2, 102, 2))
    assert_png(plot_accuracy_curve(xs, {"a": [100.0 - x / 2 for x in xs]}, tmp_path / "m.png"))


def test_accuracy_curve_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_accuracy_curve([10, 20], {"a": [1.0]}, tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plot_accuracy_curve([], {"a": []}, tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plot_accuracy_curve([10], {}, tmp_path / "bad.png")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_file(tmp_path: Path) -> None:
    path = tmp_path / "curve.png"
    path.write_bytes(b"old")
    plot_accuracy_curve([10, 20], {"a": [90.0, 80.0]}, path)
    assert_png(path)


def test_failed_save_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    path = tmp_path / "curve.png"
    path.write_bytes(b"old")

    def broken_savefig(self: Figure, *args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_accuracy_curve([10, 20], {"a": [90.0, 80.0]}, path)
    assert path.read_bytes() == b"old"  # the previous file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]


def test_accuracy_matrix_with_none_cells(tmp_path: Path) -> None:
    matrix = [
        [90.0, None, None, None],
        [70.0, 80.0, None, None],
        [60.0, 75.0, 85.0, None],
        [55.0, 70.0, None, 88.0],  # a missing lower cell too
    ]
    assert_png(plot_accuracy_matrix(matrix, tmp_path / "matrix.png", title="Accuracy matrix"))


def test_accuracy_matrix_one_task_ragged_and_large(tmp_path: Path) -> None:
    assert_png(plot_accuracy_matrix([[93.5]], tmp_path / "a" / "one.png"))
    assert_png(plot_accuracy_matrix([[90.0], [70.0, 80.0]], tmp_path / "b" / "ragged.png"))
    big = [[100.0 - t - j if j <= t else None for j in range(50)] for t in range(50)]
    assert_png(plot_accuracy_matrix(big, tmp_path / "c" / "big.png"))
    with pytest.raises(ValueError):
        plot_accuracy_matrix([], tmp_path / "d" / "empty.png")


def test_accuracy_matrix_accepts_numpy_and_tensor(tmp_path: Path) -> None:
    import numpy as np
    import torch

    array = np.array([[90.0, np.nan], [70.0, 80.0]])
    assert_png(plot_accuracy_matrix(array, tmp_path / "a" / "np.png"))
    assert_png(plot_accuracy_matrix(torch.from_numpy(array), tmp_path / "b" / "torch.png"))


def test_comparison(tmp_path: Path) -> None:
    runs = {
        "icarl B50 Inc10": ([50, 60, 70, 80, 90, 100], [82.0, 75.0, 70.0, 65.0, 60.0, 57.0]),
        "finetune Inc20": ([20, 40, 60, 80, 100], [88.0, 45.0, 30.0, 22.0, 18.0]),
        "joint": ([100], [78.0]),
    }
    assert_png(plot_comparison(runs, tmp_path / "cmp.png", title="CIFAR-100"))
    with pytest.raises(ValueError):
        plot_comparison({}, tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_comparison({"a": ([10, 20], [1.0])}, tmp_path / "x.png")


def test_no_pyplot_and_no_backend_change(tmp_path: Path) -> None:
    code = f"""
import sys
import cilkit.results.plots as plots
assert "matplotlib" not in sys.modules, "matplotlib imported at module import time"
import matplotlib
backend = dict.__getitem__(matplotlib.rcParams, "backend")  # raw, no resolution
plots.plot_accuracy_curve([10, 20], {{"a": [90.0, 80.0]}}, {str(tmp_path / "c.png")!r})
plots.plot_accuracy_matrix([[90.0, None], [70.0, 80.0]], {str(tmp_path / "m.png")!r})
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
assert dict.__getitem__(matplotlib.rcParams, "backend") is backend, "the global backend changed"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "m.png"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_png_mode_follows_umask(tmp_path: Path, umask: int) -> None:
    """PNGs get ``0666 & ~umask`` like the rest of the run directory, not mkstemp's 0600."""
    old = os.umask(umask)
    try:
        curve = plot_accuracy_curve([10, 20], {"a": [90.0, 80.0]}, tmp_path / "a" / "c.png")
        matrix = plot_accuracy_matrix([[90.0]], tmp_path / "b" / "m.png")
    finally:
        os.umask(old)
    for path in (curve, matrix):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
        assert_png(path)


def test_curve_legend_is_above_the_data() -> None:
    # low accuracies at few classes: where a legend inside the axes (lower left) would sit
    fig = _accuracy_curve_figure(
        [10, 20, 30, 40, 50],
        {"CNN top-1": [5.0, 8.0, 12.0, 30.0, 60.0], "NME top-1": [2.0, 10.0, 15.0, 35.0, 65.0]},
        title="icarl on cifar100",
    )
    assert_legend_above(fig, fig.axes[0])
    assert fig.get_suptitle() == "icarl on cifar100"


def test_comparison_legend_wraps_inside_the_figure() -> None:
    methods = ["icarl", "podnet", "der", "wa", "lucir", "finetune", "bic", "replay"]
    runs = {
        f"{m}_cifar100_b50_inc10_seed1993": ([50, 60, 70], [80.0 - k, 70.0 - k, 60.0 - k])
        for k, m in enumerate(methods)
    }
    fig = _comparison_figure(runs, title="CIFAR-100")
    ax = fig.axes[0]
    assert_legend_above(fig, ax)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == list(runs)  # every run is listed
    assert fig.get_size_inches()[1] > 4.5  # grown for the extra legend rows


def test_curve_many_tasks_round_x_ticks() -> None:
    xs = list(range(2, 102, 2))
    fig = _accuracy_curve_figure(xs, {"a": [100.0 - x / 2 for x in xs]})
    renderer = draw(fig)
    ax = fig.axes[0]
    labels = visible_tick_labels(ax.xaxis, renderer)
    values = [int(label.get_text()) for label in labels]
    steps = {b - a for a, b in zip(values, values[1:], strict=False)}
    assert len(steps) == 1 and steps.pop() in {5, 10, 20, 25, 50}
    assert_no_overlapping_labels(labels, renderer)


def _lower_triangle(num_tasks: int) -> list[list[float | None]]:
    return [
        [max(0.0, 95.0 - 3.0 * (t - j)) if j <= t else None for j in range(num_tasks)]
        for t in range(num_tasks)
    ]


@pytest.mark.parametrize(("num_tasks", "decimals"), [(1, True), (5, True), (20, True), (50, False)])
def test_matrix_cell_values_are_legible(num_tasks: int, decimals: bool) -> None:
    """Each written value fits its cell at a readable size (one decimal while there is room)."""
    fig = _accuracy_matrix_figure(_lower_triangle(num_tasks))
    renderer = draw(fig)
    ax = fig.axes[0]
    texts = ax.texts
    assert len(texts) == num_tasks * (num_tasks + 1) // 2
    cell = ax.get_window_extent(renderer).width / num_tasks  # pixels
    for text in texts:
        assert text.get_fontsize() >= 7.0
        assert ("." in text.get_text()) == decimals
        assert extent(text, renderer).width < cell


def test_matrix_too_many_tasks_shows_only_colours() -> None:
    fig = _accuracy_matrix_figure(_lower_triangle(200))
    assert len(fig.axes[0].texts) == 0
    assert max(fig.get_size_inches()) <= 30.0


@pytest.mark.parametrize(("num_tasks", "step"), [(5, 1), (20, 1), (30, 2), (50, 5)])
def test_matrix_task_ticks_round_steps(num_tasks: int, step: int) -> None:
    fig = _accuracy_matrix_figure(_lower_triangle(num_tasks))
    renderer = draw(fig)
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == list(range(0, num_tasks, step))
    assert list(ax.get_yticks()) == list(range(0, num_tasks, step))
    assert_no_overlapping_labels(visible_tick_labels(ax.xaxis, renderer), renderer)
    assert_no_overlapping_labels(visible_tick_labels(ax.yaxis, renderer), renderer)


@pytest.mark.parametrize("num_tasks", [1, 2, 5])
def test_matrix_title_and_labels_fit_small_matrices(num_tasks: int) -> None:
    title = "podnet on imagenet_subset_lt (NME)"
    fig = _accuracy_matrix_figure(_lower_triangle(num_tasks), title=title)
    renderer = draw(fig)
    ax = fig.axes[0]
    for artist in (ax.title, ax.xaxis.label, ax.yaxis.label):
        assert inside(extent(artist, renderer), fig.bbox), artist.get_text()
