"""Checkpoints: tensors as safetensors, everything else as JSON; nothing is pickled.

A checkpoint is two files written atomically, tensors first: ``NAME.safetensors`` and
``NAME.json``. The JSON holds the SHA-256 of the tensor file, so a truncated or tampered
checkpoint is refused on load, and ``LATEST`` (written last) names the newest complete one. A
crash at any moment leaves the previous checkpoint valid.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cilkit.errors import CheckpointError
from cilkit.results.io import atomic_write_bytes, atomic_write_json, atomic_write_text

FORMAT = 1
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


def save_checkpoint(directory: str | Path, name: str, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``directory/name.{safetensors,json}`` and point ``LATEST`` at it.

    Raises:
        CheckpointError: the files could not be written (the previous checkpoint stays valid).
    """
    directory = Path(directory)
    tensors, meta = flatten_state(state)
    blob = st_save(tensors) if tensors else st_save({"_empty": torch.zeros(0)})
    header = {
        "format": FORMAT,
        "tensors": f"{name}.safetensors",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "state": meta,
    }
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
    """The JSON file ``LATEST`` names, or None when there is no checkpoint yet."""
    pointer = Path(directory) / "LATEST"
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    if not name or "/" in name or name.startswith("."):
        raise CheckpointError(f"{pointer}: does not name a checkpoint")
    return Path(directory) / f"{name}.json"


def load_checkpoint(json_path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint; a truncated or modified one is a one-line CheckpointError."""
    json_path = Path(json_path)
    try:
        header = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {json_path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{json_path}: not a readable checkpoint ({err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{json_path}: not a cilkit checkpoint (format {FORMAT} expected)")
    name = header.get("tensors")
    if not isinstance(name, str) or "/" in name:
        raise CheckpointError(f"{json_path}: bad tensor file name")
    tensor_path = json_path.parent / name
    try:
        blob = tensor_path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{tensor_path}: cannot read ({err.strerror})") from None
    if hashlib.sha256(blob).hexdigest() != header.get("sha256"):
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
