"""Strict reading of TOML data files: unknown keys and wrong types are errors
that name the file, the key and the closest valid spelling."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llamawheel.core.compat import tomllib
from llamawheel.core.errors import LlamawheelError


class Table:
    """A view of one TOML table that remembers where it came from."""

    def __init__(
        self,
        data: Mapping[str, Any],
        path: Path,
        where: str,
        error: type[LlamawheelError],
    ) -> None:
        self.data = data
        self.path = path
        self.where = where
        self.error = error

    def fail(self, key: str, problem: str, tip: str | None = None) -> LlamawheelError:
        name = ".".join(part for part in (self.where, key) if part)
        return self.error(f"{self.path}: key '{name}': {problem}", tip)

    def _get(self, key: str, kind: type, kind_name: str, default: Any) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise self.fail(key, "is missing")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be {kind_name}, not {type(value).__name__}")
        return value

    def value(self, key: str, kind: type, kind_name: str) -> Any:
        """The value of a key that is there, refused (naming the file and key) unless it is a ``kind``."""
        return self._get(key, kind, kind_name, _REQUIRED)

    def str_list(self, key: str, default: Any = None) -> tuple[str, ...]:
        value = self._get(key, list, "a list of strings", _REQUIRED if default is None else default)
        for item in value:
            if not isinstance(item, str):
                raise self.fail(key, f"must hold only strings, found {item!r}")
        return tuple(value)

    def table(self, key: str, required: bool = True) -> Table:
        value = self._get(key, dict, "a table", _REQUIRED if required else {})
        where = f"{self.where}.{key}" if self.where else key
        return Table(value, self.path, where, self.error)

    def tables(self, key: str) -> list[Table]:
        """An array of tables, e.g. ``packages = [{...}, {...}]``."""
        value = self._get(key, list, "a list of tables", [])
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{i}]", "must be a table")
            where = f"{self.where}.{key}[{i}]" if self.where else f"{key}[{i}]"
            out.append(Table(item, self.path, where, self.error))
        return out


_REQUIRED = object()


def load(path: Path, error: type[LlamawheelError]) -> Table:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
    return Table(data, path, "", error)


def toml_text(values: Mapping[str, object]) -> str:
    """A flat TOML document: top-level keys, then one table per dict value."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, Mapping)]
    for key, table in values.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{key}]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"
