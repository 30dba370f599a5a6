"""``status.json``: what a run directory's training process is doing, or how it ended.

The trainer (rank 0) writes it atomically when a run starts, with its process id and host, and
again when the run ends: ``finished``, ``interrupted`` (Ctrl-C, or stopped cleanly with
``--stop-after-task``; ``cilkit run --resume`` continues it) or ``failed`` with the one-line
error. A run killed outright (SIGKILL, a power cut) keeps ``running`` with a process id that no
longer exists, which :func:`cilkit.results.runs.load_run` reads as interrupted.

It imports nothing heavy, so the CLI and the UI can read run directories without torch.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path
from typing import Any, Literal

from cilkit.results.io import atomic_write_json

STATUS_FILE = "status.json"

EndState = Literal["finished", "interrupted", "failed"]


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def one_line(err: BaseException) -> str:
    """An exception as one line: a cilkit error's own message, others prefixed with the type."""
    from cilkit.errors import CilkitError

    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(err, CilkitError) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def write_running(run_dir: str | Path) -> dict[str, Any]:
    """Mark the run as running in this process (pid and host, to tell a killed run later)."""
    status = {
        "state": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": _now(),
    }
    atomic_write_json(Path(run_dir) / STATUS_FILE, status)
    return status


def write_end(
    run_dir: str | Path, state: EndState, error: str | None = None, started: str | None = None
) -> None:
    """Mark how the run ended (``error``: the one-line reason, for ``failed``/``interrupted``)."""
    status: dict[str, Any] = {"state": state, "error": error, "ended": _now()}
    if started is not None:
        status["started"] = started
    atomic_write_json(Path(run_dir) / STATUS_FILE, status)


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's status, or None when it has none (older runs) or it is unreadable."""
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("state"), str) else None


def process_alive(status: dict[str, Any]) -> bool | None:
    """Whether the process a ``running`` status names still exists; None when it cannot be
    told (another host, or no pid recorded)."""
    pid, host = status.get("pid"), status.get("host")
    if not isinstance(pid, int) or pid <= 0 or (host is not None and host != socket.gethostname()):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return None
    return True
