"""PNG plots: valid files, edge cases (one task, missing cells), atomic writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pngcheck import PNG_SIGNATURE, assert_png  # noqa: F401

from cilkit.results.plots import plot_accuracy_curve, plot_accuracy_matrix, plot_comparison


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
