"""YAML + dotted-override loading into typed configs; unknown keys and wrong types are errors.

Every error is a one-line :class:`ConfigError` naming the key path and where its value came
from: the file, or the command-line override (:class:`~cilkit.config.source.ConfigSource`).

YAML is read with YAML 1.2's float syntax, so ``1e-3`` and ``1E6`` are numbers (YAML 1.1, which
PyYAML implements, reads exponents without a dot as strings).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from cilkit.config.schema import POLYMORPHIC_SECTIONS, ExperimentConfig, FieldError
from cilkit.config.source import ConfigSource
from cilkit.errors import ConfigError, did_you_mean
from cilkit.registry import get_registry


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats (``1e-3``, ``1E6``, ``.5``, ``+1.5e+3``)."""


_Loader.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[0-9][0-9_]*[eE][-+]?[0-9]+
        |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text safely, with YAML 1.2 floats."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, key: str, src: ConfigSource) -> Any:
    """Check ``value`` against annotation ``tp`` and convert lists to tuples / dicts to configs."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, src)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        options = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads off/no/on/yes as booleans: `amp: off`
            spelled = ("off", "no", "false") if not value else ("on", "yes", "true")
            value = next((w for w in spelled if w in options), value)
        if value in options:
            return value
        raise src.error(
            key,
            f"{value!r} is not one of {_type_name(tp)}"
            f"{did_you_mean(str(value), [str(a) for a in options])}",
        )
    if origin is tuple:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise _Mismatch
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]", src) for i, v in enumerate(value))
    if origin is dict:  # free keyword arguments (a timm model's): string keys, checked values
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _Mismatch
        _key_tp, value_tp = typing.get_args(tp)
        return {k: _coerce(v, value_tp, f"{key}.{k}", src) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _Mismatch
        return _build(tp, value, key, src)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            number = float(value.strip().replace("_", ""))  # e.g. a quoted "1e-3"
            if math.isfinite(number):
                return number
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if tp is Any:
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _build(cls: type, data: Mapping[str, Any], path: str, src: ConfigSource) -> Any:
    """Build dataclass ``cls`` from ``data``; ``path`` is the dotted key of this section."""
    for base, kind in POLYMORPHIC_SECTIONS.items():
        if cls is base:
            name = data.get("name", cls().name)
            if not isinstance(name, str):
                raise src.error(f"{path}.name", f"expected a {kind} name, got {name!r}")
            try:
                entry = get_registry(kind).get(name)
            except ConfigError as err:
                raise src.error(f"{path}.name", str(err)) from None
            cls = entry.config_cls or base
            break
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise src.error(
                dotted,
                f"unknown key{did_you_mean(str(key), fields)}; known keys: {', '.join(fields)}",
            )
        try:
            kwargs[key] = _coerce(value, hints[key], dotted, src)
        except _Mismatch:
            raise src.error(dotted, f"expected {_type_name(hints[key])}, got {value!r}") from None
    for key, tp in hints.items():
        # A polymorphic section left out still resolves to its registered config class.
        if key in fields and key not in kwargs and tp in POLYMORPHIC_SECTIONS:
            kwargs[key] = _build(tp, {}, f"{path}.{key}" if path else key, src)
    try:
        return cls(**kwargs)
    except FieldError as err:
        dotted = f"{path}.{err.field_name}" if path else err.field_name
        raise src.error(dotted, err.message) from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, text: str) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(
                f"command line: {text}: {'.'.join(parts[: i + 1])} is a value, not a section"
            )
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value``; the value is parsed as YAML (``3`` -> int, ``1e-3`` -> float,
    ``[1,2]`` -> list)."""
    if "=" not in text:
        raise ConfigError(f"command line: '{text}': expected key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"command line: '{text}': empty key")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing, empty or malformed file is a one-line ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path.resolve()}") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    """Parse a config's YAML text (``where`` names it in errors)."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        raise ConfigError(
            f"{where}: the file is empty; a config has sections such as data, scenario, learner "
            "(start from configs/quickstart.yaml, or run without -c for the built-in quickstart)"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections at the top level")
    return data


def build_config(
    data: Mapping[str, Any],
    overrides: Sequence[str] = (),
    source: ConfigSource | str | None = None,
) -> ExperimentConfig:
    """Validate a config mapping plus ``key=value`` overrides into an :class:`ExperimentConfig`.

    Args:
        data: the config file's mapping.
        overrides: dotted ``key=value`` strings, applied in order.
        source: the file ``data`` came from (or a :class:`ConfigSource`), for error messages.
    """
    src = ConfigSource.of(source, overrides)
    tree: dict[str, Any] = _deep_copy(data)
    for text in src.overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value, text)
    # A section given by name only (learner: icarl) means learner.name.
    for section in ("learner", "backbone"):
        if isinstance(tree.get(section), str):
            tree[section] = {"name": tree[section]}
    return _build(ExperimentConfig, tree, "", src)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load ``path`` (or the defaults when None) with dotted ``overrides`` applied."""
    data = read_yaml(path) if path is not None else {}
    return build_config(data, overrides, source=str(path) if path is not None else None)


def config_to_dict(cfg: Any) -> Any:
    """A plain, YAML-ready dict of a config (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    return cfg


def dump_config(cfg: Any) -> str:
    """The resolved config as YAML, sections in declaration order."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def describe_config(cls: type) -> list[tuple[str, str, Any, str]]:
    """(key, type, default, doc) rows for ``cilkit show-config``; docs come from the source."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body else []
        for node, nxt in zip(body, body[1:] + [None], strict=False):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if (
                    isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)
                ):
                    docs[node.target.id] = " ".join(nxt.value.value.split())
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = config_to_dict(f.default_factory())
        else:
            default = None
        rows.append(
            (f.name, _type_name(hints[f.name]), config_to_dict(default), docs.get(f.name, ""))
        )
    return rows


def quickstart_config_text() -> str:
    """The embedded quickstart config (also shipped as configs/quickstart.yaml)."""
    from importlib import resources

    return resources.files("cilkit").joinpath("configs/quickstart.yaml").read_text()


def quickstart_config() -> ExperimentConfig:
    """The embedded quickstart, validated (what ``cilkit run`` without ``-c`` runs)."""
    return build_config(parse_yaml(quickstart_config_text(), "quickstart.yaml (embedded)"))
