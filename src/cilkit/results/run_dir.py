"""The run directory every run writes and the CLI, the UI and the tests read.

``config.yaml`` (resolved config), ``metrics.jsonl`` (one object per finished task, with the
learner's ``evaluation_stats`` when it counts any), ``summary.json`` (whole-run metrics: those
stats after the last task and per task), ``epochs.jsonl`` (one object per trained epoch of the
main training and every stage: loss, its terms, train accuracy, learning rate), ``status.json``
(:mod:`cilkit.results.status`) and ``plots/``. All writes but the appended ``epochs.jsonl``
are atomic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cilkit.metrics import (
    LONG_TAIL_SCALARS,
    average_incremental_accuracy,
    backward_transfer,
    build_accuracy_matrix,
    forgetting,
    last_accuracy,
)
from cilkit.results.io import atomic_write_json, atomic_write_text

EPOCHS_FILE = "epochs.jsonl"


class RunDirectory:
    """Reads and writes one run's files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def epochs_path(self) -> Path:
        return self.path / EPOCHS_FILE

    def read_epochs(self) -> list[dict[str, Any]]:
        """The per-epoch records, the last of each (task, phase, epoch) where a resume repeated
        one; a line a running process is still writing is left out."""
        try:
            lines = self.epochs_path.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return []
        latest: dict[tuple, dict[str, Any]] = {}
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                key = (record.get("task_id"), record.get("phase"), record.get("epoch"))
                latest.pop(key, None)
                latest[key] = record
        return list(latest.values())

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    def write_config(self, text: str) -> None:
        atomic_write_text(self.config_path, text)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with ``records`` (atomic, so a crash keeps the old file)."""
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
        atomic_write_text(self.metrics_path, text)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())


def classifier_keys(name: str) -> dict[str, str]:
    """The record and summary keys of classifier ``name`` (``cnn`` unprefixed, others prefixed:
    ``accuracy_nme``, ``nme_accuracy_per_task``, ``nme_avg_incremental_accuracy``, ...)."""
    if name == "cnn":
        return {"prefix": "", "accuracy": "accuracy", "top5": "accuracy_top5"}
    return {"prefix": f"{name}_", "accuracy": f"accuracy_{name}", "top5": f"accuracy_{name}_top5"}


def record_classifiers(record: dict[str, Any]) -> list[str]:
    """The classifiers a record holds (``cnn`` first), from its ``classifiers`` field or, for
    records written before it existed, from its keys."""
    if "classifiers" in record:
        return list(record["classifiers"])
    return ["cnn"] + [k[len("accuracy_") :] for k in record if k == "accuracy_nme"]


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Whole-run metrics from the per-task records, for every classifier the learner reported
    (``predict``'s keys)."""
    summary: dict[str, Any] = {"num_tasks": len(records)}
    names = record_classifiers(records[-1]) if records else []
    summary["classifiers"] = names
    for name in names:
        keys = classifier_keys(name)
        prefix, key = keys["prefix"], keys["accuracy"]
        if records[-1].get(key) is None:
            continue
        rows = [r for r in records if r.get(key) is not None]
        accs = [r[key] for r in rows]
        matrix = (
            build_accuracy_matrix([r[f"{prefix}accuracy_per_task"] for r in records])
            if len(rows) == len(records)
            else None
        )
        summary.update(
            {
                f"{prefix}avg_incremental_accuracy": average_incremental_accuracy(accs),
                f"{prefix}last_accuracy": last_accuracy(accs),
                f"{prefix}avg_incremental_accuracy_top5": average_incremental_accuracy(
                    [r[keys["top5"]] for r in rows]
                ),
                f"{prefix}forgetting": forgetting(matrix) if matrix else None,
                f"{prefix}backward_transfer": backward_transfer(matrix) if matrix else None,
                f"{prefix}accuracy_matrix": matrix,
                f"{prefix}task_accuracy": accs,
            }
        )
    lt_keys = (*LONG_TAIL_SCALARS, "per_class_recall", "train_class_counts")
    if records:
        summary.update({k: records[-1][k] for k in lt_keys if k in records[-1]})
    stats = [r.get("evaluation_stats", {}) for r in records]
    if stats and stats[-1]:
        summary["evaluation_stats"] = dict(stats[-1])
        summary["evaluation_stats_per_task"] = {k: [s.get(k) for s in stats] for k in stats[-1]}
    summary["num_seen_classes"] = [r["num_seen_classes"] for r in records]
    summary["train_seconds"] = sum(r.get("train_seconds", 0.0) for r in records)
    return summary
