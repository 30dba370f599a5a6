"""Run logging: the printed lines go to ``log.txt`` in the run directory, one JSON record per
trained epoch to ``epochs.jsonl`` (what the UI's live curves and progress read), and scalars to
TensorBoard (``tensorboard/``) when the ``tensorboard`` package is installed."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cilkit.results.run_dir import EPOCHS_FILE


class RunLogger:
    """Appends text to ``run_dir/log.txt`` and writes TensorBoard scalars (rank 0 only).

    Args:
        run_dir: the run directory.
        tensorboard: also log scalars to TensorBoard if it is installed.
        enabled: False on processes other than rank 0.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "log.txt"
        self._writer: Any = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def text(self, line: str) -> None:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(line + "\n")

    def epoch(self, record: dict[str, Any]) -> None:
        """Append one trained epoch's record to ``epochs.jsonl``. A resumed run may repeat an
        epoch that ended after its last checkpoint; readers keep the last record of each."""
        if self.enabled:
            path = self.path.parent / EPOCHS_FILE
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def scalars(self, values: dict[str, float | None], step: int) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            if value is not None:
                self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _Forward(logging.Handler):
    def __init__(self, callback: Callable[[logging.LogRecord], None]) -> None:
        super().__init__(logging.INFO)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.callback(record)
        except Exception:  # a logging failure must never stop a run
            self.handleError(record)


@contextlib.contextmanager
def capture_records(
    callback: Callable[[logging.LogRecord], None], name: str = "cilkit"
) -> Iterator[None]:
    """Send the INFO-and-above records of the ``name`` loggers to ``callback`` for the duration
    (the run prints warnings and writes every record to its ``log.txt``); the records do not
    also reach the root logger meanwhile. The logger's level and handlers are restored after."""
    logger = logging.getLogger(name)
    handler = _Forward(callback)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
