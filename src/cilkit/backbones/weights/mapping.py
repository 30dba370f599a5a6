"""Recognising another toolbox's key layout and renaming its tensors onto a cilkit backbone.

Layouts are tried together; the one matching most keys with equal shapes wins (the package
docstring lists them). :func:`map_state_dict` returns a :class:`MappedWeights`: the tensors that
fit, and the missing, shape-mismatched and ignored keys in one report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

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
