"""Run logging: the printed lines go to ``log.txt`` in the run directory, and scalars to
TensorBoard (``tensorboard/``) when the ``tensorboard`` package is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
