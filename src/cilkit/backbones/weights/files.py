"""Reading and writing weights files: what can be read safely, and cilkit's own format.

* ``.safetensors`` files are read with :mod:`safetensors` (no code can run);
* anything else (``.pt``, ``.pth``, ``.ckpt``, ...) is read with
  ``torch.load(path, weights_only=True, map_location="cpu")`` and nothing else: a pickle that
  would import a function or build an object other than tensors and plain containers is refused
  with a one-line error and nothing in it runs. A checkpoint that wraps its state dict
  (``{"state_dict": ...}``, ``{"model_state_dict": ...}``, ``{"model": ...}``, ``{"net": ...}``)
  is unwrapped. Missing, damaged or truncated files give one-line errors naming the path.
* :func:`save_weights` writes a mapped state dict as cilkit-named ``.safetensors`` with a JSON
  record (``cilkit import-weights``).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cilkit.errors import CilkitError

if TYPE_CHECKING:
    from cilkit.backbones.weights.mapping import MappedWeights


class WeightsError(CilkitError):
    """A weights file cannot be read, is unsafe, or does not fit the network."""


_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or of a PyTorch file read with
    ``weights_only=True``, on the CPU.

    Raises:
        WeightsError: the path is missing, the file is damaged, holds no tensors, or is a pickle
            that would run code or build arbitrary objects (nothing in it is executed).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        obj: Any = _read_safetensors(path)
    else:
        obj = _read_torch(path)
    tensors = _unwrap(obj)
    if not tensors:
        raise WeightsError(f"{path}: holds no tensors (not a state dict)")
    return tensors


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError, OSError, ...: always one line
        raise WeightsError(
            f"{path}: not a readable .safetensors file ({_first_line(err)})"
        ) from None


def _read_torch(path: Path) -> Any:
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes: the error says it all
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        pickled = _starts_like_torch_file(path)
        if pickled and (found or "weights_only" in text.lower() or "Unsupported operand" in text):
            what = f" ({found.group(1)})" if found else ""
            raise WeightsError(
                f"{path}: refused: its pickle would run code or build objects other than tensors"
                f"{what}; only plain state dicts load (convert it where it was made, or save it "
                "as .safetensors)"
            ) from None
        raise WeightsError(f"{path}: damaged or not a PyTorch file ({_first_line(err)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as err:
        raise WeightsError(f"{path}: damaged or not a PyTorch file ({_first_line(err)})") from None
    except Exception as err:  # any other failure inside the restricted unpickler: one line too
        raise WeightsError(
            f"{path}: cannot be read ({type(err).__name__}: {_first_line(err)})"
        ) from None


def _starts_like_torch_file(path: Path) -> bool:
    """Whether the file opens as ``torch.save`` writes one (a zip archive, or a pickle's PROTO
    opcode in the legacy format): only then does an unpickler refusal mean a pickle that would
    build objects, not bytes that were never a checkpoint."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:200]


def _unwrap(obj: Any) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: the tensors of ``obj`` or of its first wrapper key."""
    if not isinstance(obj, Mapping):
        return {}
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors:
        return tensors
    for key in _WRAPPERS:
        if isinstance(obj.get(key), Mapping):
            found = _unwrap(obj[key])
            if found:
                return found
    return {}


def save_weights(mapped: MappedWeights, out: str | Path, backbone_name: str) -> Path:
    """Write ``mapped`` as cilkit-named ``.safetensors`` (``backbone.*`` and ``head.weight`` /
    ``head.bias``) with a metadata header, and ``OUT.json`` listing what was mapped.

    Returns:
        The path of the JSON record.
    """
    from safetensors.torch import save_file

    out = Path(out)
    tensors = {f"backbone.{k}": v.contiguous() for k, v in mapped.backbone.items()}
    if mapped.head_weight is not None:
        tensors["head.weight"] = mapped.head_weight.contiguous()
        if mapped.head_bias is not None:
            tensors["head.bias"] = mapped.head_bias.contiguous()
    record = {"backbone": backbone_name, **mapped.as_json()}
    meta = {
        "format": "cilkit-weights",
        "backbone": backbone_name,
        "source": mapped.path,
        "layout": mapped.layout,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    record_path = out.with_suffix(".json")
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record_path
