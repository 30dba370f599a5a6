"""What a run prints and draws: the per-task table, the summary lines and the plots, for every
classifier the learner reports (``predict``'s keys: ``cnn``, ``nme``, ...)."""

from __future__ import annotations

from typing import Any

from cilkit.config import ExperimentConfig
from cilkit.results.plots import plot_accuracy_curve, plot_accuracy_matrix, plot_per_class_accuracy
from cilkit.results.run_dir import RunDirectory, classifier_keys, record_classifiers


def _fmt(v: float | None, width: int = 6) -> str:
    return f"{v:{width}.2f}" if v is not None else " " * (width - 1) + "-"


def _label(name: str) -> str:
    return name.upper()


def table_header(record: dict[str, Any]) -> str:
    """The column titles: CNN, top-5, old, new, then one column per further classifier and per
    evaluation statistic of the learner."""
    others = "".join(f" {_label(n):>6}" for n in record_classifiers(record)[1:])
    others += "".join(f" {k:>6}" for k in record.get("evaluation_stats", {}))
    return (
        f"{'task':>4} {'classes':>7} {'CNN':>6} {'top-5':>6} {'old':>6} {'new':>6}{others} "
        f"{'loss':>7} {'time s':>7}"
    )


def table_row(r: dict[str, Any]) -> str:
    """One task's line of the table."""
    loss = f"{r['train_loss']:7.3f}" if r["train_loss"] is not None else "      -"
    others = "".join(
        f" {_fmt(r.get(classifier_keys(n)['accuracy']))}" for n in record_classifiers(r)[1:]
    )
    others += "".join(
        f" {_fmt(v, max(6, len(k)))}" for k, v in r.get("evaluation_stats", {}).items()
    )
    return (
        f"{r['task_id']:>4} {r['num_seen_classes']:>7} {_fmt(r['accuracy'])} "
        f"{_fmt(r['accuracy_top5'])} {_fmt(r['old_accuracy'])} {_fmt(r['new_accuracy'])}"
        f"{others} {loss} {r['train_seconds']:7.1f}"
    )


def summary_text(s: dict[str, Any]) -> str:
    """The summary lines, one per classifier."""
    lines = ["", "summary (accuracies in %):"]
    for name in s.get("classifiers", ["cnn"]):
        prefix = classifier_keys(name)["prefix"]
        if f"{prefix}avg_incremental_accuracy" not in s:
            continue
        lines.append(
            f"  {_label(name)}: average incremental accuracy "
            f"{s[prefix + 'avg_incremental_accuracy']:.2f}, "
            f"last accuracy {s[prefix + 'last_accuracy']:.2f}, forgetting "
            f"{_fmt(s[prefix + 'forgetting'], 0).strip()}, backward transfer "
            f"{_fmt(s[prefix + 'backward_transfer'], 0).strip()}"
        )
    for key, value in s.get("evaluation_stats", {}).items():
        lines.append(f"  {key} {value:.2f} (last task)")
    lines.append(f"  training time {s['train_seconds']:.1f} s")
    return "\n".join(lines)


def write_plots(
    run: RunDirectory, cfg: ExperimentConfig, records: list[dict[str, Any]], summary: dict
) -> None:
    """``accuracy.png`` (one line per classifier), an accuracy matrix per classifier
    (``accuracy_matrix.png`` for the CNN, ``accuracy_matrix_<name>.png`` for the others) and
    ``per_class_accuracy.png``."""
    plots = run.plots_dir
    xs = [r["num_seen_classes"] for r in records]
    title = f"{cfg.learner.name} on {cfg.data.name}"
    series = {}
    for name in summary.get("classifiers", ["cnn"]):
        key = classifier_keys(name)["accuracy"]
        if records and records[-1].get(key) is not None:
            series[f"{_label(name)} top-1"] = [r.get(key) for r in records]
        matrix = summary.get(f"{classifier_keys(name)['prefix']}accuracy_matrix")
        if matrix:
            file = "accuracy_matrix.png" if name == "cnn" else f"accuracy_matrix_{name}.png"
            plot_accuracy_matrix(matrix, plots / file, title=f"{title} ({_label(name)})")
    plot_accuracy_curve(xs, series, plots / "accuracy.png", title=title)
    last = records[-1]
    if last.get("per_class_recall") is not None:
        plot_per_class_accuracy(
            last["per_class_recall"],
            last["train_class_counts"],
            plots / "per_class_accuracy.png",
            title=f"{title}: per-class accuracy after the last task",
            many_threshold=cfg.scenario.many_threshold,
            few_threshold=cfg.scenario.few_threshold,
        )
