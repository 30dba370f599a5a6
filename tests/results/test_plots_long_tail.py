"""Per-class accuracy plot of long-tailed runs: valid PNGs, missing classes, edge cases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pngcheck import PNG_SIGNATURE, assert_png  # noqa: F401

from cilkit.results.plots import plot_per_class_accuracy


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
