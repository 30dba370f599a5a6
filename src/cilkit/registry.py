"""timm-style registries: filled by explicit imports, one ``create`` verb each, duplicates refused,
and one registry of registries (:func:`get_registry`) through which the config loader and the CLI
find every kind by name, without an if-chain and without importing what they do not need."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cilkit.errors import ConfigError, did_you_mean

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object with its optional typed config class."""

    name: str
    obj: T
    config_cls: type | None
    description: str


def _first_line(obj: Any) -> str:
    """The docstring's summary: its first paragraph on one line (a summary wrapped over two
    lines is not cut)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())


class Registry(Generic[T]):
    """A name -> object table for one kind of component (learners, backbones, datasets, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, config: type | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a duplicate name is an error."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, obj, config, _first_line(obj))
            return obj

        return decorator

    def register_class(self, name: str) -> Callable[[T], T]:
        """Decorator registering a class under ``name`` with its ``config_cls`` attribute."""

        def decorator(cls: T) -> T:
            return self.register(name, config=getattr(cls, "config_cls", None))(cls)

        return decorator

    def create(self, cfg: Any) -> Any:
        """Instantiate the class registered as ``cfg.name`` with its config."""
        return self.get(cfg.name).obj(cfg)

    def get(self, name: str) -> Entry[T]:
        """The entry for ``name``; an unknown name is a one-line ConfigError with a suggestion."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise ConfigError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; known: {known}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        """Registered entries, sorted by name."""
        return [self._entries[n] for n in self.names()]


REGISTRIES: dict[str, tuple[str, str]] = {
    "learner": ("cilkit.learners", "LEARNERS"),
    "backbone": ("cilkit.backbones", "BACKBONES"),
    "head": ("cilkit.backbones", "HEADS"),
    "dataset": ("cilkit.data", "DATASETS"),
    "buffer": ("cilkit.buffers", "SELECTORS"),
    "loss": ("cilkit.losses", "LOSSES"),
    "sampler": ("cilkit.data.samplers", "SAMPLERS"),
}
"""Every kind of registered component: the package whose import fills its registry, and the
registry's name there."""


def get_registry(kind: str) -> Registry[Any]:
    """The filled registry of ``kind`` (``learner``, ``backbone``, ``head``, ``dataset``,
    ``buffer``, ``loss``, ``sampler``); importing its package registers every entry."""
    try:
        module, name = REGISTRIES[kind]
    except KeyError:
        known = ", ".join(REGISTRIES)
        message = f"unknown kind '{kind}'{did_you_mean(kind, REGISTRIES)}; known: {known}"
        raise ConfigError(message) from None
    return getattr(importlib.import_module(module), name)
