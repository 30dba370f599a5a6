"""Checkpoints: tensors as safetensors, everything else as JSON; nothing is pickled.

A checkpoint is two files written atomically, tensors first: ``NAME.safetensors`` and
``NAME.json``. The JSON holds the SHA-256 of the tensor file and a SHA-256 of its own content
(everything but that field, serialised canonically), so a truncated, damaged or edited
checkpoint, tensors or JSON, is refused on load. ``LATEST`` (written last) names the newest
complete one; when it is missing or damaged, or the checkpoint it names is, resuming falls back
to the newest valid checkpoint (:func:`find_resume_checkpoint`). A crash at any moment leaves the
previous checkpoint valid.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cilkit.errors import CheckpointError
from cilkit.results.io import atomic_write_bytes, atomic_write_json, atomic_write_text

FORMAT = 2
"""Format 2 checksums the JSON too; format 1 (cilkit 0.1) covered only the tensors."""
_TENSOR = "__tensor__"


def flatten_state(tree: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state into ``{key: tensor}`` and a JSON tree that references the keys."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().cpu().contiguous().clone()
            return {_TENSOR: path}
        if isinstance(node, dict):
            if not all(isinstance(k, str) for k in node):
                raise TypeError(f"state keys must be strings at '{path}'")
            return {k: walk(v, f"{path}/{k}" if path else k) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot checkpoint a {type(node).__name__} at '{path}'")

    return tensors, walk(tree, prefix)


def unflatten_state(meta: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(meta, dict):
        if set(meta) == {_TENSOR}:
            return tensors[meta[_TENSOR]]
        return {k: unflatten_state(v, tensors) for k, v in meta.items()}
    if isinstance(meta, list):
        return [unflatten_state(v, tensors) for v in meta]
    return meta


def _content_digest(header: dict[str, Any]) -> str:
    """SHA-256 of a header without its ``sha256`` field, serialised canonically."""
    body = {k: v for k, v in header.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_checkpoint(directory: str | Path, name: str, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``directory/name.{safetensors,json}`` and point ``LATEST`` at it.

    Raises:
        CheckpointError: the files could not be written (the previous checkpoint stays valid).
    """
    directory = Path(directory)
    tensors, meta = flatten_state(state)
    blob = st_save(tensors) if tensors else st_save({"_empty": torch.zeros(0)})
    header: dict[str, Any] = {
        "format": FORMAT,
        "tensors": f"{name}.safetensors",
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "state": meta,
    }
    header["sha256"] = _content_digest(header)
    json_path = directory / f"{name}.json"
    try:
        atomic_write_bytes(directory / f"{name}.safetensors", blob)
        atomic_write_json(json_path, header)
        atomic_write_text(directory / "LATEST", name + "\n")
    except OSError as err:
        previous = latest_checkpoint(directory)
        keep = f"; the previous checkpoint {previous.name} is still valid" if previous else ""
        raise CheckpointError(
            f"could not write checkpoint {json_path}: {err.strerror or err}{keep}"
        ) from None
    return json_path


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The JSON file ``LATEST`` names, or None when there is none (or ``LATEST`` is unreadable).

    It is not verified: :func:`find_resume_checkpoint` picks the checkpoint to continue from.
    """
    name = _read_latest(Path(directory))
    return Path(directory) / f"{name}.json" if name else None


def _read_latest(directory: Path) -> str | None:
    try:
        name = (directory / "LATEST").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if _NAME.fullmatch(name) else None


_NAME = re.compile(
    r"task-(\d{3,})(?:-(train|(?:before_training|after_training|after_task)-\d+)-epoch-(\d{4,}))?"
)
"""Checkpoint names: ``task-NNN`` after task NNN; inside task NNN, ``task-NNN-PHASE-epoch-EEEE``
with PHASE ``train`` (the main training) or ``WHEN-K`` (stage K of a stage point)."""

_PHASES = {"before_training": 0, "train": 1, "after_training": 2, "after_task": 3}


def checkpoint_progress(name: str) -> tuple[int, int, int, int]:
    """An order on checkpoint names by training progress: ``task-002`` (task 2 done) comes
    after every checkpoint inside task 2 (its stages in their order, epochs in theirs), which
    come after ``task-001``."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"not a checkpoint name: {name!r}")
    task, phase, epoch = int(match.group(1)), match.group(2), match.group(3)
    if phase is None:
        return task + 1, -1, 0, 0
    when, _, index = phase.partition("-")
    return task, _PHASES[when], int(index or 0), int(epoch) + 1


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoint JSON files in ``directory``, newest (most progress) first."""
    found = [p for p in Path(directory).glob("task-*.json") if _NAME.fullmatch(p.stem)]
    return sorted(found, key=lambda p: checkpoint_progress(p.stem), reverse=True)


def find_resume_checkpoint(
    directory: str | Path,
) -> tuple[Path, dict[str, Any], list[str]] | None:
    """The newest valid checkpoint to resume from, its state, and what was skipped and why.

    ``LATEST`` names the newest complete checkpoint, but a crash, a full disk or a damaged file
    can leave it missing, unreadable or pointing at a damaged checkpoint; then the newest
    checkpoint that verifies is used and each note says what was passed over.

    Returns:
        None when the folder holds no checkpoint at all.

    Raises:
        CheckpointError: checkpoints exist but none verifies (naming the newest and why).
    """
    directory = Path(directory)
    candidates = list_checkpoints(directory)
    if not candidates:
        return None
    notes: list[str] = []
    latest = _read_latest(directory)
    if latest is None:
        state = "missing" if not (directory / "LATEST").exists() else "damaged"
        notes.append(f"{directory / 'LATEST'} is {state}")
    problems: list[str] = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        notes.extend(problems)
        if not notes and latest is not None and latest != path.stem:
            notes.append(f"LATEST names {latest}, but {path.name} is newer and complete")
        if notes:
            notes.append(f"resuming from {path.name}, the newest valid checkpoint")
        return path, state, notes
    raise CheckpointError(
        f"{problems[0]}; no valid checkpoint remains in {directory}: start the run again "
        "with --overwrite"
    )


def load_checkpoint(json_path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint; a truncated, damaged or edited one (JSON or tensors) is a
    one-line CheckpointError naming the file."""
    json_path = Path(json_path)
    try:
        header = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {json_path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{json_path}: not a readable checkpoint ({reason})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        hint = (
            " (format 1, written by cilkit 0.1, does not checksum its JSON)" if found == 1 else ""
        )
        raise CheckpointError(f"{json_path}: not a cilkit checkpoint of format {FORMAT}{hint}")
    try:
        digest = _content_digest(header)
    except ValueError as err:  # NaN or infinity smuggled into the JSON
        raise CheckpointError(f"{json_path}: not a valid checkpoint ({err})") from None
    if digest != header.get("sha256"):
        raise CheckpointError(
            f"{json_path}: checksum mismatch, the checkpoint's JSON is damaged or was modified"
        )
    name = header.get("tensors")
    if not isinstance(name, str) or "/" in name:
        raise CheckpointError(f"{json_path}: bad tensor file name")
    tensor_path = json_path.parent / name
    try:
        blob = tensor_path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{tensor_path}: cannot read ({err.strerror})") from None
    if hashlib.sha256(blob).hexdigest() != header.get("tensors_sha256"):
        raise CheckpointError(
            f"{tensor_path}: checksum mismatch, the checkpoint is truncated or was modified"
        )
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as err:
        raise CheckpointError(f"{tensor_path}: not a valid safetensors file ({err})") from None
    try:
        return unflatten_state(header["state"], tensors)
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{json_path}: inconsistent checkpoint ({err})") from None


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's global RNGs and of named generators."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Restore what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
