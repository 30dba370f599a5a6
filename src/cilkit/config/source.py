"""Where a config's values came from, so an error names the file or the command-line override."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cilkit.errors import ConfigError


@dataclass(frozen=True)
class ConfigSource:
    """The config file and the ``key=value`` overrides a config was built from.

    Attributes:
        file: the file (or a description such as ``quickstart.yaml (embedded)``); None for a
            config built in code.
        overrides: the command-line overrides in the order given.
    """

    file: str | None = None
    overrides: tuple[str, ...] = ()

    @classmethod
    def of(cls, source: ConfigSource | str | None, overrides: Sequence[str] = ()) -> ConfigSource:
        """``source`` as a ConfigSource (a plain string is a file name)."""
        if isinstance(source, ConfigSource):
            return source if not overrides else cls(source.file, tuple(overrides))
        return cls(source, tuple(overrides))

    def override_for(self, key: str) -> str | None:
        """The last override that set ``key`` or a section holding it, e.g. ``optim.lr=1e-3``."""
        for text in reversed(self.overrides):
            name = text.split("=", 1)[0].strip()
            if key == name or key.startswith(name + ".") or name.startswith(key + "."):
                return text
        return None

    def error(self, key: str, message: str) -> ConfigError:
        """A one-line error about dotted ``key`` blaming where its value came from:
        ``command line: optim.lr=-1: must be > 0`` or ``exp.yaml: optim.lr: must be > 0``."""
        text = self.override_for(key) if key else None
        if text is not None:
            name = text.split("=", 1)[0].strip()
            return ConfigError(
                f"command line: {text}: {message}"
                if name == key
                else f"command line: {text}: {key}: {message}"
            )
        where = f"{self.file}: " if self.file else ""
        return ConfigError(f"{where}{key}: {message}" if key else f"{where}{message}")
