"""Progress bars (tqdm or rich), or none."""

from __future__ import annotations

import sys
from typing import Any


class _NullBar:
    def __init__(self, *args: Any) -> None:
        pass

    def update(self, **metrics: float) -> None:
        pass

    def close(self) -> None:
        pass


class _TqdmBar:
    def __init__(self, total: int, desc: str, initial: int = 0) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total, initial=initial, desc=desc, unit="epoch", leave=False, file=sys.stderr
        )

    def update(self, **metrics: float) -> None:
        self._bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


class _RichBar:
    def __init__(self, total: int, desc: str, initial: int = 0) -> None:
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(transient=True)
        self._progress.start()
        self._task = self._progress.add_task(desc, total=total, completed=initial)

    def update(self, **metrics: float) -> None:
        text = " ".join(f"{k}={v:.3f}" for k, v in metrics.items())
        self._progress.update(self._task, advance=1, description=text)

    def close(self) -> None:
        self._progress.stop()


class Progress:
    """Makes one bar per task in the chosen style; rich falls back to tqdm when absent."""

    def __init__(self, style: str = "tqdm", enabled: bool = True) -> None:
        self.style = style if enabled else "none"

    def bar(self, total: int, desc: str, initial: int = 0) -> Any:
        if self.style == "none":
            return _NullBar()
        if self.style == "rich":
            try:
                return _RichBar(total, desc, initial)
            except ImportError:
                pass
        return _TqdmBar(total, desc, initial)
