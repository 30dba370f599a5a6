"""Runs started from the page: the same ``cilkit run`` as a shell's, in a subprocess.

:class:`RunLauncher` starts ``python -m cilkit run`` (or ``--resume``, or ``cilkit tune``) with
its console written to ``<runs>/.ui/<run>.console.txt``, stops a run the way Ctrl-C does
(SIGINT: the trainer checkpoints, marks the run ``interrupted`` and it can be resumed), and tells
the page which runs it started are still alive. It holds no training logic and no state a run
needs: a run started here is the same record as one started from a shell.

:func:`run_progress` reads where a run is from its files alone (``epochs.jsonl``,
``metrics.jsonl``, ``status.json``), so the progress bars work for runs started anywhere.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cilkit.errors import CilkitError
from cilkit.results.run_dir import RunDirectory

UI_FOLDER = ".ui"
"""Under the runs folder: the page's config files, consoles and exported reports."""

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """A file-name-safe form of a run name."""
    return _SAFE.sub("-", text).strip("-.") or "run"


@dataclass
class Launched:
    """A process the page started."""

    run_dir: Path
    process: subprocess.Popen
    console: Path
    command: list[str]
    stopping: bool = False
    """Ctrl-C was sent: the process checkpoints and exits."""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class RunLauncher:
    """Starts, stops and resumes ``cilkit`` processes for the runs under ``runs_root``.

    Args:
        runs_root: the runs folder the page shows; every run it starts is created inside.
        python: the interpreter that runs ``-m cilkit`` (this one by default).
        env: extra environment for the processes (e.g. ``OMP_NUM_THREADS``).
    """

    def __init__(
        self, runs_root: str | Path, python: str = sys.executable, env: dict[str, str] | None = None
    ) -> None:
        self.root = Path(runs_root).resolve()
        self.python = python
        self.env = dict(env or {})
        self.launched: dict[Path, Launched] = {}

    @property
    def ui_dir(self) -> Path:
        return self.root / UI_FOLDER

    def inside(self, path: str | Path) -> Path:
        """``path`` resolved, refused unless it lies in the runs folder."""
        resolved = Path(path).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise CilkitError(f"{path}: not inside the runs folder {self.root}")
        return resolved

    def new_run_dir(self, name: str) -> Path:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = self.root / f"{stamp}-{safe_name(name)}"
        path, i = base, 1
        while path.exists() or path in self.launched:
            i += 1
            path = base.with_name(f"{base.name}-{i}")
        return path

    def _start(self, run_dir: Path, args: list[str]) -> Launched:
        self.ui_dir.mkdir(parents=True, exist_ok=True)
        console = self.ui_dir / f"{run_dir.name}.console.txt"
        command = [self.python, "-m", "cilkit", *args]
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with console.open("ab") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # the page's own Ctrl-C does not reach the runs
            )
        launched = Launched(run_dir, process, console, command)
        self.launched[run_dir] = launched
        return launched

    def launch(self, config_yaml: str, name: str) -> Launched:
        """Write ``config_yaml`` to ``.ui/<run>.yaml`` and start ``cilkit run`` on it into a
        new run directory named after ``name``."""
        run_dir = self.new_run_dir(name)
        self.ui_dir.mkdir(parents=True, exist_ok=True)
        config = self.ui_dir / f"{run_dir.name}.yaml"
        config.write_text(config_yaml)
        return self._start(run_dir, ["run", "-c", str(config), "--out", str(run_dir), "--quiet"])

    def resume(self, run_dir: str | Path) -> Launched:
        """Continue an interrupted run (``cilkit run --resume``)."""
        path = self.inside(run_dir)
        current = self.launched.get(path)
        if current is not None and current.alive:
            if not current.stopping:
                raise CilkitError(f"{path.name} is already running")
            try:  # stopped: its process is writing its last files and exits shortly
                current.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise CilkitError(f"{path.name} is still stopping; resume it in a moment") from None
        if not RunDirectory(path).config_path.exists():
            raise CilkitError(f"{path.name}: not a run directory (no config.yaml)")
        return self._start(path, ["run", "--resume", str(path), "--quiet"])

    def tune(self, run_dir: str | Path, options: list[str]) -> Launched:
        """Start ``cilkit tune --from run_dir`` into ``<run>-tuned-<stamp>`` with ``options``."""
        source = self.inside(run_dir)
        out = self.new_run_dir(f"{source.name}-tuned")
        args = ["tune", "--from", str(source), "--out", str(out), *options]
        return self._start(out, args)

    def stop(self, run_dir: str | Path) -> str:
        """Stop a run this page started the way Ctrl-C does; it can be resumed after."""
        path = self.inside(run_dir)
        current = self.launched.get(path)
        if current is None or not current.alive:
            raise CilkitError(f"{path.name}: not a running process started from this page")
        current.process.send_signal(signal.SIGINT)
        current.stopping = True
        return f"sent Ctrl-C to {path.name} (pid {current.process.pid})"

    def running(self) -> list[Launched]:
        return [launched for launched in self.launched.values() if launched.alive]

    def exit_message(self, run_dir: str | Path) -> str | None:
        """For a process of this page that ended with an error before its run directory could
        record one (a config error): the console's last line."""
        current = self.launched.get(Path(run_dir).resolve())
        if current is None or current.alive or current.process.returncode == 0:
            return None
        try:
            lines = [ln for ln in current.console.read_text().splitlines() if ln.strip()]
        except OSError:
            return None
        return lines[-1] if lines else f"exit status {current.process.returncode}"

    def close(self) -> None:
        """Stop every run still alive (the page is closing); each stays resumable."""
        for launched in self.running():
            launched.process.send_signal(signal.SIGINT)
        for launched in list(self.launched.values()):
            try:
                launched.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                launched.process.kill()


def run_progress(run_dir: str | Path) -> dict[str, Any]:
    """Where a run is, from its files: the last epoch record's task, phase and epoch, the tasks
    finished, and each task's epochs as fractions for the progress bars.

    Returns a dict with ``num_tasks`` (None until the first epoch ends), ``tasks_done``,
    ``task_id``, ``label``, ``epoch``, ``epochs`` and ``task_fraction``/``run_fraction`` in
    [0, 1].
    """
    run = RunDirectory(run_dir)
    epochs = run.read_epochs()
    try:
        tasks_done = len(run.read_metrics())
    except (OSError, ValueError):
        tasks_done = 0
    last = epochs[-1] if epochs else None
    num_tasks = last.get("num_tasks") if last else None
    out: dict[str, Any] = {
        "num_tasks": num_tasks,
        "tasks_done": tasks_done,
        "task_id": None,
        "label": None,
        "epoch": 0,
        "epochs": 0,
        "task_fraction": 0.0,
        "run_fraction": 1.0 if num_tasks and tasks_done >= num_tasks else 0.0,
    }
    if last is None:
        return out
    epoch, total = int(last.get("epoch", 0)), int(last.get("epochs", 0) or 0)
    task_fraction = epoch / total if total else 0.0
    if last.get("task_id", -1) < tasks_done:  # that task is evaluated: its bar is full
        task_fraction = 1.0
    out.update(
        task_id=last.get("task_id"),
        label=last.get("label"),
        epoch=epoch,
        epochs=total,
        task_fraction=task_fraction,
    )
    if num_tasks:
        done = min(tasks_done, num_tasks)
        partial = 0.0 if last.get("task_id", -1) < tasks_done else task_fraction
        out["run_fraction"] = min(1.0, (done + partial) / num_tasks)
    return out
