"""Reading run directories: one run's state, config, records and summary as a :class:`RunInfo`.

:func:`load_run` reads one run directory; :func:`list_runs` finds every run directory under a
folder (newest first); :func:`load_runs` takes what a user typed (run directories or folders of
runs). ``cilkit compare``, ``cilkit report`` and the web UI read runs through it.

A run's **state** comes from what its directory holds: ``finished`` (``summary.json``),
``running`` (``status.json`` names a live process), ``interrupted`` (stopped by Ctrl-C or
``--stop-after-task``, or killed: its process is gone and it has a checkpoint or finished tasks;
``cilkit run --resume RUN_DIR`` continues it), ``failed`` (with its one-line error) or ``empty``
(nothing to show or resume yet: killed before its first task ended). Runs written before
``status.json`` existed are finished with a ``summary.json``, else interrupted when they have a
checkpoint or a finished task, else empty. Nothing here imports torch or matplotlib.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cilkit.errors import CheckpointError, CilkitError
from cilkit.results.status import process_alive, read_status

State = Literal["finished", "running", "interrupted", "failed", "empty"]
STATES: tuple[State, ...] = ("finished", "running", "interrupted", "failed", "empty")

LONG_TAIL_RATIO = 2.0
"""A run without a configured long-tail profile still counts as long-tailed when its largest
class has at least this many times the training images of its smallest (a naturally long-tailed
dataset); balanced sets such as digits or CIFAR sit near 1."""


@dataclass
class RunInfo:
    """One run directory as the CLI and the UI show it.

    Attributes:
        path: the run directory.
        name: a label for the run: the config's name (the learner's when the name is the default
            ``experiment``), with the learner added when the name does not contain it; made
            unique (the directory's name added) when several runs share it.
        state: ``finished``, ``running``, ``interrupted``, ``failed`` or ``empty``.
        error: the one-line error of a failed run (or the reason an interrupted one stopped).
        config: the resolved config (``config.yaml``) as a dict.
        records: the finished tasks' records (``metrics.jsonl``).
        summary: ``summary.json``, or None while the run is unfinished.
        modified: the newest modification time of the run's files (seconds since the epoch).
        started: when the run (or its last resume) started, from ``status.json``, if known.
        checkpoint: the newest checkpoint's name (``checkpoints/LATEST``), if any.
    """

    path: Path
    name: str
    state: State
    error: str | None
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None
    modified: float = 0.0
    started: str | None = None
    checkpoint: str | None = None
    _partial: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def learner(self) -> str:
        return str(config_section(self.config, "learner").get("name", "?"))

    @property
    def dataset(self) -> str:
        return str(config_section(self.config, "data").get("name", "?"))

    @property
    def metrics(self) -> dict[str, Any]:
        """``summary.json``, or for an unfinished run the same metrics over its finished tasks
        (empty without any)."""
        if self.summary is not None:
            return self.summary
        if self._partial is None:
            from cilkit.results.run_dir import summarize

            self._partial = summarize(self.records) if self.records else {}
        return self._partial

    @property
    def num_tasks(self) -> int:
        return len(self.records) if self.records else int(self.metrics.get("num_tasks", 0))

    @property
    def classifiers(self) -> list[str]:
        return list(self.metrics.get("classifiers") or [])

    @property
    def long_tailed(self) -> bool:
        """A long-tail profile is configured, or the training counts are imbalanced
        (:data:`LONG_TAIL_RATIO`)."""
        if config_section(self.config, "scenario").get("long_tail") is not None:
            return True
        counts = [c for c in self.metrics.get("train_class_counts") or [] if c > 0]
        return bool(counts) and max(counts) >= LONG_TAIL_RATIO * min(counts)

    @property
    def resume_command(self) -> str | None:
        """How to continue an interrupted run."""
        return f"cilkit run --resume {self.path}" if self.state == "interrupted" else None


def config_section(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run directory (it holds the ``config.yaml`` every run writes first)."""
    return (Path(path) / "config.yaml").is_file()


def load_run(path: str | Path) -> RunInfo:
    """Read one run directory.

    Raises:
        CheckpointError: ``path`` does not exist or is not a run directory, or one of its files
            is unreadable (one line naming it).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory")
    if not is_run_dir(path):
        what = "a file" if path.is_file() else "no config.yaml"
        raise CheckpointError(f"{path}: not a run directory ({what})")
    config = _read_config(path / "config.yaml")
    records = _read_records(path / "metrics.jsonl")
    summary = _read_json(path / "summary.json")
    status = read_status(path)
    checkpoint = _latest_checkpoint(path / "checkpoints")
    state, error = _state(summary, status, records, checkpoint)
    return RunInfo(
        path=path,
        name=_base_name(config, path),
        state=state,
        error=error,
        config=config,
        records=records,
        summary=summary,
        modified=_modified(path),
        started=(status or {}).get("started"),
        checkpoint=checkpoint,
    )


def list_runs(root: str | Path) -> list[RunInfo]:
    """Every run directory under ``root`` (``root`` itself when it is one), newest first.

    Folders inside a run directory and hidden folders are not searched. A run directory that
    cannot be read is listed as ``failed`` with the reason.

    Raises:
        CheckpointError: ``root`` is not a directory.
    """
    root = Path(root)
    if is_run_dir(root):
        return [load_run(root)]
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such directory")
    found: list[RunInfo] = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        if "config.yaml" in files:
            subdirs[:] = []  # runs do not nest
            try:
                found.append(load_run(folder))
            except CilkitError as err:
                found.append(_unreadable(Path(folder), str(err)))
    found.sort(key=lambda r: (-r.modified, str(r.path)))
    return unique_names(found)


def load_runs(paths: Iterable[str | Path]) -> list[RunInfo]:
    """The runs named by ``paths``, in order: each a run directory or a folder of runs (all of
    them, newest first); a run named twice is listed once.

    Raises:
        CilkitError: a path does not exist or holds no run (one line naming it), or no path.
    """
    runs: list[RunInfo] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        if is_run_dir(p):
            group = [load_run(p)]
        elif p.is_dir():
            group = list_runs(p)
            if not group:
                raise CheckpointError(
                    f"{p}: not a run directory (no config.yaml) and holds no run directory"
                )
        else:
            load_run(p)  # raises the one-line error for this path
            group = []
        for run in group:
            key = run.path.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(run)
    if not runs:
        raise CilkitError("no run directory given")
    return unique_names(runs)


def unique_names(runs: Sequence[RunInfo]) -> list[RunInfo]:
    """``runs`` with names made unique: a shared name gets the run directory's name added (and a
    number if that is shared too)."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    out, used = [], set()
    for r in runs:
        name = r.name if counts[r.name] == 1 else f"{r.name} [{r.path.name}]"
        base, k = name, 2
        while name in used:
            name, k = f"{base} #{k}", k + 1
        used.add(name)
        out.append(r if name == r.name else dataclasses.replace(r, name=name))
    return out


def _base_name(config: dict[str, Any], path: Path) -> str:
    name = str(config.get("name") or path.name)
    learner = str(config_section(config, "learner").get("name", ""))
    if not learner or learner in name:
        return name
    return learner if name == "experiment" else f"{name} ({learner})"


def _state(
    summary: dict[str, Any] | None,
    status: dict[str, Any] | None,
    records: list[dict[str, Any]],
    checkpoint: str | None,
) -> tuple[State, str | None]:
    recorded = (status or {}).get("state")
    error = (status or {}).get("error")
    if summary is not None or recorded == "finished":
        return "finished", None
    if recorded == "failed":
        return "failed", error or "failed (no message recorded)"
    if recorded == "running" and process_alive(status or {}) is not False:
        return "running", None
    has_progress = bool(records) or checkpoint is not None
    if recorded == "interrupted":
        return "interrupted", error
    if has_progress and status is None:  # written before status.json existed
        return "interrupted", "no status.json: stopped, killed or still running"
    if has_progress:
        return "interrupted", "its process ended without a final state (killed?)"
    return "empty", None


def _unreadable(path: Path, error: str) -> RunInfo:
    return RunInfo(path, path.name, "failed", error, {}, [], None, modified=_modified(path))


def _read_config(path: Path) -> dict[str, Any]:
    from cilkit.config.loader import parse_yaml

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read ({getattr(err, 'strerror', err)})") from None
    return parse_yaml(text, str(path))


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise CheckpointError(f"{path} line {number}: not valid JSON") from None
        if not isinstance(record, dict):
            raise CheckpointError(f"{path} line {number}: not a task record")
        records.append(record)
    return records


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{path}: not readable JSON") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a run summary")
    return data


def _latest_checkpoint(folder: Path) -> str | None:
    """The name ``LATEST`` gives, else the newest-looking task checkpoint (unverified)."""
    try:
        name = (folder / "LATEST").read_text().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if name:
        return name
    names = sorted(p.stem for p in folder.glob("task-*.json")) if folder.is_dir() else []
    return names[-1] if names else None


def _modified(path: Path) -> float:
    times = [path.stat().st_mtime]
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "status.json", "log.txt"):
        try:
            times.append((path / name).stat().st_mtime)
        except OSError:
            pass
    return max(times)


def classifier_label(classifier: str) -> str:
    """How tables and legends name a classifier (``cnn`` -> ``CNN``)."""
    return classifier.upper()
