"""Per-class accuracy plot of long-tailed runs: valid PNGs, missing classes, edge cases, layout."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from figcheck import (
    assert_legend_above,
    assert_no_overlapping_labels,
    draw,
    extent,
    inside,
    overlap,
    visible_tick_labels,
)
from pngcheck import PNG_SIGNATURE, assert_png  # noqa: F401

from cilkit.results.plots import _per_class_figure, plot_per_class_accuracy


def _exp_counts(num_classes: int, n_max: int, imb: float) -> list[int]:
    return [int(n_max * (1 / imb) ** (i / (num_classes - 1))) for i in range(num_classes)]


def test_cifar100_lt_profile(tmp_path: Path) -> None:
    counts = _exp_counts(100, 500, 100)
    recalls: list[float | None] = [max(0.0, 90.0 - 0.9 * i) for i in range(100)]
    out = plot_per_class_accuracy(recalls, counts, tmp_path / "pc.png", title="CIFAR-100-LT")
    assert out == tmp_path / "pc.png"
    assert_png(out)


def test_none_and_unsorted_counts(tmp_path: Path) -> None:
    counts = [5, 300, 50, 19, 101, 20]  # not sorted: the plot sorts them
    recalls = [10.0, 95.0, None, 0.0, 80.0, None]
    assert_png(plot_per_class_accuracy(recalls, counts, tmp_path / "a" / "none.png"))
    all_missing = [None] * 6
    assert_png(plot_per_class_accuracy(all_missing, counts, tmp_path / "b" / "all_none.png"))


def test_one_class_and_zero_counts(tmp_path: Path) -> None:
    assert_png(plot_per_class_accuracy([73.0], [500], tmp_path / "a" / "one.png"))
    assert_png(plot_per_class_accuracy([None], [500], tmp_path / "b" / "one_none.png"))
    assert_png(plot_per_class_accuracy([50.0, 40.0], [0, 0], tmp_path / "c" / "zeros.png"))
    assert_png(plot_per_class_accuracy([50.0, 40.0], [10, 0], tmp_path / "d" / "zero.png"))


def test_many_classes_and_custom_thresholds(tmp_path: Path) -> None:
    counts = _exp_counts(1000, 1280, 256)
    recalls: list[float | None] = [60.0 if c > 100 else 30.0 for c in counts]
    path = tmp_path / "big.png"
    assert_png(plot_per_class_accuracy(recalls, counts, path, many_threshold=200, few_threshold=5))


def test_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no class"):
        plot_per_class_accuracy([], [], tmp_path / "x.png")
    with pytest.raises(ValueError, match="training counts"):
        plot_per_class_accuracy([1.0, 2.0], [10], tmp_path / "x.png")
    with pytest.raises(ValueError, match=">= 0"):
        plot_per_class_accuracy([1.0], [-1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="few_threshold"):
        plot_per_class_accuracy([1.0], [1], tmp_path / "x.png", many_threshold=5, few_threshold=9)
    assert list(tmp_path.iterdir()) == []


def test_no_pyplot(tmp_path: Path) -> None:
    code = f"""
import sys
import cilkit.results.plots as plots
plots.plot_per_class_accuracy([90.0, None, 10.0], [500, 50, 5], {str(tmp_path / "p.png")!r})
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


def _recalls(num_classes: int, seed: int = 0) -> list[float | None]:
    rng = random.Random(seed)
    return [
        min(100.0, max(0.0, 90.0 - 60.0 * i / num_classes + rng.gauss(0, 8)))
        for i in range(num_classes)
    ]


def _count_axis(fig: Any) -> Any:
    ax, twin = fig.axes
    assert twin.get_shared_x_axes().joined(ax, twin)
    return twin


def _count_labels(twin: Any) -> list[str]:
    """Every label drawn on the count axis, major and minor, inside the view."""
    lo, hi = sorted(twin.get_ylim())
    texts = []
    for locs, formatter in (
        (twin.yaxis.get_majorticklocs(), twin.yaxis.get_major_formatter()),
        (twin.yaxis.get_minorticklocs(), twin.yaxis.get_minor_formatter()),
    ):
        inside_view = [v for v in locs if lo <= v <= hi]
        texts += [t for t in formatter.format_ticks(inside_view) if t]
    return texts


COUNT_PROFILES = {
    "cifar100_lt": (_exp_counts(100, 500, 100), "log"),
    "imagenet_lt": (_exp_counts(1000, 1280, 256), "log"),
    "ten_classes": (_exp_counts(10, 500, 100), "log"),
    "narrow_131_137": ([137 - (6 * i) // 99 for i in range(100)], "linear"),
    "all_equal": ([500] * 10, "linear"),
    "with_zero": ([10, 0, 5, 8], "linear"),
    "one_class": ([500], "linear"),
}


@pytest.mark.parametrize("profile", sorted(COUNT_PROFILES))
def test_count_axis_has_plain_number_labels(profile: str) -> None:
    counts, scale = COUNT_PROFILES[profile]
    fig = _per_class_figure(_recalls(len(counts)), counts)
    draw(fig)
    twin = _count_axis(fig)
    assert twin.get_yscale() == scale
    labels = _count_labels(twin)
    assert len(labels) >= 2, labels
    for text in labels:
        for sign in ("10^", "\\times", "e+", "$"):
            assert sign not in text, f"{text!r} is not a plain number"
        assert float(text) >= 0
    lo, hi = twin.get_ylim()
    assert hi >= max(counts)  # every count is on the axis
    if scale == "linear":
        assert lo == 0  # heights proportional to counts: a near-flat profile looks flat
    else:
        assert {"10", "100"} <= set(labels)
        assert lo <= min(c for c in counts if c > 0)


def test_narrow_range_labels_read_like_the_counts() -> None:
    counts = [137 - (6 * i) // 99 for i in range(100)]
    fig = _per_class_figure(_recalls(100), counts)
    draw(fig)
    labels = [float(t) for t in _count_labels(_count_axis(fig))]
    assert labels == sorted(labels)
    assert all(v == int(v) for v in labels)  # whole images, no "1.37" mantissas
    assert labels[-1] >= 100


@pytest.mark.parametrize("num_classes", [10, 40, 100, 1000])
def test_legend_is_above_the_bars(num_classes: int) -> None:
    counts = _exp_counts(num_classes, 500, 100)
    recalls = _recalls(num_classes)
    recalls[num_classes // 2] = None  # all five legend entries
    title = "icarl on cifar100_lt: per-class accuracy after the last task"
    fig = _per_class_figure(recalls, counts, title=title)
    ax = fig.axes[0]
    assert_legend_above(fig, ax)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("many-shot") for t in texts)
    assert "no test samples" in texts and "training images" in texts
    assert fig.get_suptitle() == title


@pytest.mark.parametrize("num_classes", [10, 40, 100, 1000])
def test_labels_and_ticks_fit_and_do_not_overlap(num_classes: int) -> None:
    counts = _exp_counts(num_classes, 1280, 256)
    fig = _per_class_figure(_recalls(num_classes), counts, title="per-class accuracy")
    renderer = draw(fig)
    ax, twin = fig.axes
    title = fig._suptitle if fig._suptitle is not None else ax.title
    parts = [title, ax.xaxis.label, ax.yaxis.label, twin.yaxis.label]
    for part in parts:
        assert inside(extent(part, renderer), fig.bbox), part.get_text()
    x_labels = visible_tick_labels(ax.xaxis, renderer)
    assert len(x_labels) >= min(num_classes, 5)
    assert_no_overlapping_labels(x_labels, renderer)
    assert_no_overlapping_labels(visible_tick_labels(ax.yaxis, renderer), renderer)
    count_labels = visible_tick_labels(twin.yaxis, renderer)
    assert_no_overlapping_labels(count_labels, renderer)
    for label in count_labels:  # the count ticks stay clear of the accuracy axis' area
        assert not overlap(extent(label, renderer), ax.get_window_extent(renderer))
