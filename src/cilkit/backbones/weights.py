"""Trained weights from elsewhere: ``backbone.weights: PATH`` and ``cilkit import-weights``.

A state dict saved by another toolbox is read safely, its key layout is recognised, its tensors
are renamed onto cilkit's and loaded into a cilkit network, with one readable report of what did
not fit. Reading:

* ``.safetensors`` files are read with :mod:`safetensors` (no code can run);
* anything else (``.pt``, ``.pth``, ``.ckpt``, ...) is read with
  ``torch.load(path, weights_only=True, map_location="cpu")`` and nothing else: a pickle that
  would import a function or build an object other than tensors and plain containers is refused
  with a one-line error and nothing in it runs. A checkpoint that wraps its state dict
  (``{"state_dict": ...}``, ``{"model_state_dict": ...}``, ``{"model": ...}``, ``{"net": ...}``)
  is unwrapped. Missing, damaged or truncated files give one-line errors naming the path.

Key layouts recognised (tried together; the one matching most keys with equal shapes wins):

* a ``module.`` prefix (``nn.DataParallel`` / DDP), then a ``convnet.``, ``backbone.``,
  ``encoder.`` or ``model.`` prefix on the feature extractor (PyCIL keeps its extractor under
  ``convnet.``; cilkit's own networks under ``backbone.``);
* the classifier under ``fc.``, ``linear.``, ``classifier.`` or ``head.`` (``weight`` and
  ``bias``), outside the extractor's prefix;
* torchvision's ResNet names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample``) and PyCIL's
  CIFAR ResNet-18 stem (``conv1.0``, ``conv1.1``) onto cilkit's ``resnet18``/``resnet34``
  (``stem.0``, ``stem.1``, ``stages.0.0.conv1``, ``shortcut``);
* PyCIL's CIFAR ResNets (``convs/cifar_resnet.py``: ``conv_1_3x3``, ``bn_1``,
  ``stage_1.0.conv_a``/``bn_a``/``conv_b``/``bn_b``) onto cilkit's ``resnet20/32/56``. PyCIL's
  extractor also holds an unused ``fc`` (10 classes); it is listed as ignored.
* cilkit's own names, unchanged.

A load is complete when every backbone tensor of the cilkit network is found with its shape
(``num_batches_tracked`` excepted). Otherwise it is refused, with the missing and shape-mismatched
keys listed, unless ``backbone.weights_strict: false`` (``--allow-partial`` for
``cilkit import-weights``); keys of the file that match nothing are listed as ignored and never
stop a load.

The classifier rows are used only when the file's classifier has one row per class of the
dataset (``num_classes x feature width``, indexed by the dataset's original class ids, as a model
trained on the whole dataset has them) and the head is a linear head with a bias: they are then
reordered into the scenario's class order and fill the head's rows at its first growth (the first
task's classes) in ``cilkit run``, or all seen classes in ``cilkit tune --weights``. Otherwise the
head is skipped (it starts fresh) and the report says why.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cilkit.backbones.heads import ExpandableLinear
from cilkit.errors import CilkitError

logger = logging.getLogger(__name__)


class WeightsError(CilkitError):
    """A weights file cannot be read, is unsafe, or does not fit the network."""


_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
_PREFIXES = ("", "convnet.", "backbone.", "encoder.", "model.")
_HEAD = re.compile(r"^(fc|linear|classifier|head)\.(weight|bias)$")
_SKIP_MISSING = ("num_batches_tracked",)

Rule = tuple[re.Pattern[str], str]


def _rules(*pairs: tuple[str, str]) -> list[Rule]:
    return [(re.compile(p), r) for p, r in pairs]


LAYOUTS: dict[str, list[Rule]] = {
    "cilkit": [],
    "torchvision_resnet": _rules(
        (r"^conv1\.0\.", "stem.0."),  # PyCIL's CIFAR resnet18 stem (a Sequential)
        (r"^conv1\.1\.", "stem.1."),
        (r"^conv1\.", "stem.0."),
        (r"^bn1\.", "stem.1."),
        (r"^layer(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),  # type: ignore[list-item]
        (r"\.downsample\.", ".shortcut."),
    ),
    "pycil_cifar_resnet": _rules(
        (r"^conv_1_3x3\.", "stem.0."),
        (r"^bn_1\.", "stem.1."),
        (r"^stage_(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),  # type: ignore[list-item]
        (r"\.conv_a\.", ".conv1."),
        (r"\.bn_a\.", ".bn1."),
        (r"\.conv_b\.", ".conv2."),
        (r"\.bn_b\.", ".bn2."),
    ),
}
"""Name rewrites of each known layout, applied in order to each key (after its prefix)."""


def _rename(key: str, rules: Sequence[Rule]) -> str:
    for pattern, repl in rules:
        key = pattern.sub(repl, key)
    return key


# ---- reading ------------------------------------------------------------------------------------
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
        if found or "weights_only" in text.lower() or "Unsupported operand" in text:
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


# ---- mapping ------------------------------------------------------------------------------------
@dataclass
class MappedWeights:
    """A state dict renamed onto a cilkit backbone, and what did not fit.

    Attributes:
        path: the file it came from.
        layout: the recognised layout, e.g. ``module. + convnet. + pycil_cifar_resnet``.
        backbone: cilkit-named backbone tensors whose shapes fit.
        names: source key of each loaded cilkit key.
        missing: backbone keys the file lacks.
        mismatched: ``(cilkit key, shape in the file, shape in cilkit)`` of the keys found with
            another shape.
        ignored: keys of the file that match nothing.
        head_weight: the file's classifier weight, or None.
        head_bias: the file's classifier bias, or None.
        head_note: what happened to the classifier (filled when it is applied).
        head_loaded: the classifier rows fit and are used.
        head_source: the file's keys of the classifier.
    """

    path: str
    layout: str
    backbone: dict[str, torch.Tensor]
    names: dict[str, str]
    missing: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    ignored: list[str]
    head_weight: torch.Tensor | None = None
    head_bias: torch.Tensor | None = None
    head_note: str = ""
    head_loaded: bool = False
    head_source: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every backbone tensor found with its shape."""
        return not self.missing and not self.mismatched

    def problems(self, limit: int = 5) -> str:
        """The missing and mismatched (and ignored) keys as one line."""
        parts = []
        if self.missing:
            parts.append(f"missing {len(self.missing)}: {_some(self.missing, limit)}")
        if self.mismatched:
            items = [f"{k} {list(a)} in file vs {list(b)}" for k, a, b in self.mismatched]
            parts.append(f"shape mismatch {len(items)}: {_some(items, limit)}")
        if self.ignored:
            parts.append(f"ignored {len(self.ignored)}: {_some(self.ignored, limit)}")
        return "; ".join(parts)

    def summary(self) -> str:
        """One line: where from, which layout, how much loaded, the problems, the head."""
        total = len(self.backbone) + len(self.missing) + len(self.mismatched)
        text = f"weights {self.path} ({self.layout}): {len(self.backbone)}/{total} backbone tensors"
        if self.problems():
            text += f"; {self.problems()}"
        return text + (f"; {self.head_note}" if self.head_note else "")

    def as_json(self) -> dict[str, Any]:
        """What was mapped, for ``cilkit import-weights``' JSON record."""
        return {
            "source": self.path,
            "layout": self.layout,
            "mapped": self.names,
            "missing": self.missing,
            "shape_mismatch": [
                {"key": k, "file": list(a), "cilkit": list(b)} for k, a, b in self.mismatched
            ],
            "ignored": self.ignored,
            "head": self.head_source,
            "head_shape": list(self.head_weight.shape) if self.head_weight is not None else None,
        }


def _some(items: Sequence[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", +{len(items) - limit} more" if len(items) > limit else "")


def map_state_dict(
    source: Mapping[str, torch.Tensor], backbone: nn.Module, path: str = "<state dict>"
) -> MappedWeights:
    """Rename ``source`` onto ``backbone``'s keys, trying every known layout.

    Args:
        source: a state dict in any recognised layout.
        backbone: the cilkit backbone to fit (only its ``state_dict`` shapes are read).
        path: where ``source`` came from, for messages.
    """
    target = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    dp = all(k.startswith("module.") for k in source)
    keys = {(k[len("module.") :] if dp else k): k for k in source}
    best: tuple[int, int, str, str] | None = None
    for prefix in _PREFIXES:
        inside = [k for k in keys if k.startswith(prefix)]
        for name, rules in LAYOUTS.items():
            renamed = {_rename(k[len(prefix) :], rules): k for k in inside}
            fits = sum(
                1 for c, k in renamed.items() if target.get(c) == tuple(source[keys[k]].shape)
            )
            named = sum(1 for c in renamed if c in target)
            score = (fits, named, prefix, name)
            if best is None or score[:2] > best[:2]:
                best = score
    assert best is not None
    _, _, prefix, name = best
    rules = LAYOUTS[name]
    out: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    mismatched, ignored, head_source = [], [], []
    head: dict[str, torch.Tensor] = {}
    for short, original in keys.items():
        tensor = source[original]
        if prefix and not short.startswith(prefix) or not prefix and _HEAD.match(short):
            kind = _HEAD.match(short)
            if kind and kind.group(2) not in head:
                head[kind.group(2)] = tensor
                head_source.append(original)
            else:
                ignored.append(original)
            continue
        cilkit = _rename(short[len(prefix) :], rules)
        if cilkit not in target:
            ignored.append(original)
        elif tuple(tensor.shape) != target[cilkit]:
            mismatched.append((cilkit, tuple(tensor.shape), target[cilkit]))
        else:
            out[cilkit], names[cilkit] = tensor, original
    skip = {k for k, _, _ in mismatched}
    missing = [
        k for k in target if k not in out and k not in skip and not k.endswith(_SKIP_MISSING)
    ]
    layout = " + ".join(p for p in (dp and "module.", prefix, name) if p)
    return MappedWeights(
        path=str(path),
        layout=layout,
        backbone=out,
        names=names,
        missing=missing,
        mismatched=mismatched,
        ignored=ignored,
        head_weight=head.get("weight"),
        head_bias=head.get("bias"),
        head_source=head_source,
    )


# ---- applying -----------------------------------------------------------------------------------
def load_backbone_weights(
    backbone: nn.Module, path: str | Path, strict: bool = True, what: str = "the backbone"
) -> MappedWeights:
    """Read ``path``, map it onto ``backbone`` and copy the tensors that fit into it.

    Args:
        backbone: the cilkit backbone.
        path: a ``.safetensors`` or PyTorch state dict.
        strict: refuse a partial load (missing or shape-mismatched backbone keys).
        what: how the messages name the backbone.

    Raises:
        WeightsError: the file cannot be read, or (``strict``) would load only partly.
    """
    mapped = map_state_dict(read_state_dict(path), backbone, str(path))
    if not mapped.backbone:
        raise WeightsError(
            f"{path}: no tensor matches {what} (tried layouts {', '.join(LAYOUTS)} with prefixes "
            f"module./convnet./backbone./encoder.); {mapped.problems()}"
        )
    if strict and not mapped.complete:
        hint = ""
        if any(k == "stem.0.weight" for k, _, _ in mapped.mismatched):
            hint = " (another stem or channel count? see cilkit show-config of the backbone)"
        raise WeightsError(
            f"{path} would load only partly into {what}: {mapped.problems()}{hint}; set "
            "backbone.weights_strict=false (import-weights: --allow-partial) to start anyway"
        )
    with torch.no_grad():
        backbone.load_state_dict(mapped.backbone, strict=False)
    return mapped


def head_rows(
    mapped: MappedWeights, head: nn.Module, num_classes: int, class_order: Sequence[int]
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor] | None]:
    """A function giving the file's classifier rows (weight, bias) for the first ``k`` classes
    of the scenario's order, or None when the file's classifier does not fit (``mapped.head_note``
    says why)."""
    w, b = mapped.head_weight, mapped.head_bias
    in_features = getattr(head, "in_features", None)
    if w is None:
        mapped.head_note = (
            "the file has no classifier (fc/linear/classifier/head): head starts fresh"
        )
    elif not isinstance(head, ExpandableLinear) or not head.has_bias:
        mapped.head_note = (
            f"head skipped: the {type(head).__name__} head is not a linear classifier"
        )
    elif b is None or w.dim() != 2 or b.shape != (w.shape[0],):
        mapped.head_note = "head skipped: the file's classifier has no matching bias"
    elif w.shape != (num_classes, in_features):
        mapped.head_note = (
            f"head skipped: the file's classifier is {list(w.shape)}, the dataset needs "
            f"[{num_classes}, {in_features}] (one row per class)"
        )
    else:
        mapped.head_note = "head rows loaded (reordered into the scenario's class order)"
        mapped.head_loaded = True
        index = torch.as_tensor(list(class_order), dtype=torch.long)
        return lambda k: (w[index[:k]].clone(), b[index[:k]].clone())
    return lambda k: None


def preload_head(head: nn.Module, rows: Callable[[int], Any]) -> None:
    """Make ``head``'s first growth take the file's rows instead of a fresh initialisation.

    Only a growth from zero classes uses them (a head restored from a checkpoint already has
    rows, so resuming never applies them twice); the hook removes itself after that growth.
    """

    def init_rows(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        del head._init_rows  # one-shot: later growths initialise as usual
        found = rows(weight.shape[0]) if head.num_classes == 0 else None
        if found is None or bias is None:
            head._init_rows(weight, bias)
            return
        weight.copy_(found[0].to(weight))
        bias.copy_(found[1].to(bias))

    head._init_rows = init_rows


def fill_head(head: nn.Module, rows: Callable[[int], Any]) -> bool:
    """Copy the file's rows into every class ``head`` has now; False when they do not fit."""
    found = rows(head.num_classes)
    if found is None:
        return False
    with torch.no_grad():
        for chunk, bias, s in zip(head.weights, head.biases, head.chunk_slices(), strict=True):
            chunk.copy_(found[0][s].to(chunk))
            bias.copy_(found[1][s].to(bias))
    return True


def load_network_weights(
    network: nn.Module,
    path: str | Path,
    strict: bool,
    num_classes: int,
    class_order: Sequence[int],
) -> MappedWeights:
    """``backbone.weights``: load the backbone now and the classifier rows at the head's first
    growth (or now, into the classes it already has), and log a one-line report."""
    mapped = load_backbone_weights(network.backbone, path, strict, f"backbone '{_name(network)}'")
    rows = head_rows(mapped, network.head, num_classes, class_order)
    if network.head.num_classes:
        fill_head(network.head, rows)
    else:
        preload_head(network.head, rows)
    logger.info(mapped.summary())
    return mapped


def _name(network: nn.Module) -> str:
    return type(network.backbone).__name__


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
