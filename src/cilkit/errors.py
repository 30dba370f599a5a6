"""User-facing errors: each one is a single line that says what went wrong, where and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class CilkitError(Exception):
    """An error caused by the user's input; the CLI prints it as one line without a traceback."""


class ConfigError(CilkitError):
    """A config key, value or combination is invalid."""


class DatasetError(CilkitError):
    """A dataset is missing, incomplete or corrupted."""


class CheckpointError(CilkitError):
    """A checkpoint or run directory cannot be used."""


class TrainingError(CilkitError):
    """Training cannot go on (a NaN loss, ...)."""


class RunInterrupted(CilkitError):
    """Ctrl-C: a consistent checkpoint was written; the run can be resumed."""

    def __init__(self, run_dir: Path, task_id: int, epoch: int | None = None) -> None:
        at = f"task {task_id}" + (f", epoch {epoch}" if epoch is not None else "")
        super().__init__(
            f"interrupted; checkpoint written at {at}. Continue with: cilkit run --resume {run_dir}"
        )


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for a near miss, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
