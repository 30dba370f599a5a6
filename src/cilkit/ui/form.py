"""The Train form, generated from the typed configs and the registries (no hand-kept options).

:func:`form_fields` walks :class:`~cilkit.config.ExperimentConfig` the way the config loader
does. A polymorphic section (``learner``, ``backbone``, ``learner.loss``, ``train.sampler``, ...)
gives a name field with the registry's names as choices and, for each registered name, the
options its own config class adds; the page shows only the selected name's. An optional section
(``scenario.long_tail``, ``learner.rebalance``) gives an on/off field and its own fields. A new
learner, loss or sampler therefore appears in the form the moment it registers.

:func:`form_to_config` turns the form's values back into a validated config: the shown fields
become a config mapping, which :func:`cilkit.config.build_config` checks like any file, with
the same one-line errors.
No gradio here: the backend tests and the page share this module.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cilkit.config import ExperimentConfig, build_config
from cilkit.config.loader import config_to_dict, describe_config
from cilkit.config.schema import POLYMORPHIC_SECTIONS
from cilkit.errors import ConfigError
from cilkit.registry import get_registry

NAME_KINDS = {"data.name": "dataset", "memory.selection": "buffer"}
"""Plain string fields whose value is a registered name (the others come from the
polymorphic sections)."""

PRIMARY = (
    "name",
    "data.name",
    "scenario.initial_increment",
    "scenario.increment",
    "scenario.class_order_seed",
    "scenario.long_tail",
    "scenario.long_tail.kind",
    "scenario.long_tail.imb_factor",
    "learner.name",
    "backbone.name",
    "memory.memory_size",
    "memory.selection",
    "learner.loss.name",
    "train.sampler.name",
    "train.epochs",
    "train.batch_size",
    "optim.lr",
    "seed",
)
"""The fields the issue's Train form leads with; every other field is in a folded section."""

NONE_CHOICE = "(none)"

Kind = Literal["bool", "choice", "int", "float", "str", "ints", "floats", "section"]


@dataclass(frozen=True)
class FormField:
    """One input of the form.

    Attributes:
        key: the dotted config key (``learner.kd_temperature``); ``section`` fields name an
            optional section (``scenario.long_tail``): on means present.
        kind: the input's type.
        default: the value the form starts with.
        optional: blank means None.
        choices: the allowed values of a ``choice`` field.
        doc: the field's documentation from the config class.
        owner: for a polymorphic section's own options, ``(name_key, name)``: the field shows
            only while ``name_key`` holds ``name``.
        within: the optional section keys this field lies in (shown only while they are on).
    """

    key: str
    kind: Kind
    default: Any
    optional: bool = False
    choices: tuple[Any, ...] = ()
    doc: str = ""
    owner: tuple[str, str] | None = None
    within: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """Unique within the form: several classes may own the same key (``kd_weight``)."""
        return self.key if self.owner is None else f"{self.owner[1]}:{self.key}"

    @property
    def section(self) -> str:
        return self.key.split(".")[0] if "." in self.key else "run"


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return tp, False


def _docs(cls: type) -> dict[str, str]:
    return {key: doc for key, _, _, doc in describe_config(cls)}


def _leaf(key: str, tp: Any, default: Any, optional: bool, doc: str, **kw: Any) -> FormField:
    if key in NAME_KINDS:
        names = tuple(get_registry(NAME_KINDS[key]).names())
        return FormField(key, "choice", default, optional, names, doc, **kw)
    if typing.get_origin(tp) is Literal:
        return FormField(key, "choice", default, optional, typing.get_args(tp), doc, **kw)
    if tp is bool:
        return FormField(key, "bool", default, optional, (), doc, **kw)
    if tp is int:
        return FormField(key, "int", default, optional, (), doc, **kw)
    if tp is float:
        return FormField(key, "float", default, optional, (), doc, **kw)
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        kind: Kind = "ints" if item is int else "floats"
        return FormField(key, kind, default, optional, (), doc, **kw)
    return FormField(key, "str", default, optional, (), doc, **kw)


def _walk(
    cls: type,
    values: Mapping[str, Any],
    prefix: str,
    out: list[FormField],
    owner: tuple[str, str] | None,
    within: tuple[str, ...],
    skip: frozenset[str] = frozenset(),
) -> None:
    hints = typing.get_type_hints(cls)
    docs = _docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        key = f"{prefix}{f.name}"
        tp, optional = _unwrap_optional(hints[f.name])
        value = values.get(f.name)
        if tp in POLYMORPHIC_SECTIONS:
            _polymorphic(tp, key, value, optional, out, owner, within, docs.get(f.name, ""))
        elif dataclasses.is_dataclass(tp):
            inner = within
            if optional:
                out.append(
                    FormField(
                        key,
                        "section",
                        value is not None,
                        False,
                        (),
                        docs.get(f.name, ""),
                        owner,
                        within,
                    )
                )
                inner = (*within, key)
            sub = value if isinstance(value, Mapping) else config_to_dict(tp())
            _walk(tp, sub, f"{key}.", out, owner, inner)
        else:
            out.append(
                _leaf(key, tp, value, optional, docs.get(f.name, ""), owner=owner, within=within)
            )


def _polymorphic(
    base: type,
    key: str,
    value: Any,
    optional: bool,
    out: list[FormField],
    owner: tuple[str, str] | None,
    within: tuple[str, ...],
    doc: str,
) -> None:
    registry = get_registry(POLYMORPHIC_SECTIONS[base])
    current = value if isinstance(value, Mapping) else {}
    chosen = current.get("name") if value is not None else None
    names = tuple(registry.names())
    choices = ((NONE_CHOICE,) if optional else ()) + names
    name_key = f"{key}.name"
    start = chosen if chosen is not None else (NONE_CHOICE if optional else base().name)
    out.append(FormField(name_key, "choice", start, False, choices, doc, owner, within))
    base_fields = {f.name for f in dataclasses.fields(base)}
    # The base class's fields (beyond the name) once; each registered class's own fields.
    base_values = current if chosen is not None else config_to_dict(base())
    _walk(base, base_values, f"{key}.", out, owner, within, skip=frozenset({"name"}))
    for entry in registry.entries():
        cls = entry.config_cls or base
        if cls is base:
            continue
        defaults = config_to_dict(cls())
        own = {**defaults, **current} if entry.name == chosen else defaults
        _walk(cls, own, f"{key}.", out, (name_key, entry.name), within, skip=frozenset(base_fields))


def form_fields(start: ExperimentConfig | None = None) -> list[FormField]:
    """Every input of the Train form, starting from the values of ``start`` (the defaults when
    None); a registered class's options start at that class's defaults."""
    values = config_to_dict(start if start is not None else ExperimentConfig())
    out: list[FormField] = []
    _walk(ExperimentConfig, values, "", out, None, ())
    return out


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _parse_list(text: Any, kind: Kind, key: str) -> tuple | None:
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (list, tuple)):
        return tuple(text)
    items = [t for t in str(text).replace(",", " ").split() if t]
    convert = int if kind == "ints" else float
    try:
        return tuple(convert(t) for t in items)
    except ValueError:
        what = "integers" if kind == "ints" else "numbers"
        raise ConfigError(f"the UI form: {key}: expected {what} separated by commas") from None


def _value(f: FormField, raw: Any) -> Any:
    if f.kind in ("ints", "floats"):
        return _parse_list(raw, f.kind, f.key)
    if raw is None or (isinstance(raw, str) and not raw.strip() and f.kind != "str"):
        return None
    if f.kind == "int":
        number = float(raw)
        if not number.is_integer():
            raise ConfigError(f"the UI form: {f.key}: expected a whole number, got {raw}")
        return int(number)
    if f.kind == "float":
        return float(raw)
    if f.kind == "str" and f.optional and not str(raw).strip():
        return None
    return raw


def form_to_tree(fields: list[FormField], values: Mapping[str, Any]) -> dict[str, Any]:
    """The config mapping the form's ``values`` stand for: every shown field's value.

    ``values`` maps :attr:`FormField.id` to the input's value; a missing id keeps the field's
    start value. A field is shown when its owner's name is selected and its optional sections
    are on."""
    by_key = {f.key: f for f in fields if f.owner is None}

    def raw(f: FormField) -> Any:
        return values.get(f.id, f.default)

    def selected(key: str) -> Any:
        return raw(by_key[key]) if key in by_key else None

    tree: dict[str, Any] = {}
    for f in fields:
        if f.owner is not None and selected(f.owner[0]) != f.owner[1]:
            continue
        if any(not selected(s) for s in f.within):
            continue
        if any(selected(n) == NONE_CHOICE for n in _none_parents(f.key, by_key)):
            continue
        value = raw(f)
        if f.kind == "section":
            _set(tree, f.key, {} if value else None)
        elif f.kind == "choice" and f.key.endswith(".name") and NONE_CHOICE in f.choices:
            if value == NONE_CHOICE:
                _set(tree, f.key.rsplit(".", 1)[0], None)
            else:
                _set(tree, f.key, value)
        else:
            parsed = _value(f, value)
            _set(tree, f.key, list(parsed) if isinstance(parsed, tuple) else parsed)
    return tree


def _none_parents(key: str, by_key: Mapping[str, FormField]) -> list[str]:
    """The optional polymorphic name fields above ``key`` (``learner.rebalance.sampler.name``
    for ``learner.rebalance.sampler.samples_per_class``)."""
    parts = key.split(".")
    out = []
    for i in range(1, len(parts) - 1):
        name_key = ".".join(parts[:i]) + ".name"
        f = by_key.get(name_key)
        if f is not None and NONE_CHOICE in f.choices and name_key != key:
            out.append(name_key)
    return out


def form_to_config(fields: list[FormField], values: Mapping[str, Any]) -> ExperimentConfig:
    """Validate the form's values into a config; a bad value is a one-line ConfigError."""
    return build_config(form_to_tree(fields, values), source="the UI form")
