"""Ctrl-C during a run: the first asks for a checkpoint at the next epoch end, the second stops."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class InterruptHandler:
    """First Ctrl-C asks the loop to checkpoint and stop at the next epoch end; a second one
    aborts at once (the last complete checkpoint stays valid). A context manager; outside the
    main thread it does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nCtrl-C: stopping after this epoch with a checkpoint (Ctrl-C again to abort now)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> InterruptHandler:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
