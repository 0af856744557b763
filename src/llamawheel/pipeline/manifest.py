"""The JSON manifest beside every wheel: what is in it and how it was built.

This module names no stage: each stage's result describes itself (``manifest_fields()``), and
`compose` merges those descriptions under a header that identifies the wheel file. `write` shows the
credentials of every URL in it as ``***`` (`redact`): a manifest is copied into the index, bundles and releases.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from llamawheel.core import fileio
from llamawheel.core.redact import redact_tree

SUFFIX = ".json"
SCHEMA = 1


class Describes(Protocol):
    def manifest_fields(self) -> dict[str, Any]:
        """Top-level manifest keys this result contributes (a dict value is merged with other stages')."""
        ...


def path_for(wheel: Path) -> Path:
    return wheel.with_name(wheel.name + SUFFIX)


def _merge(into: dict[str, Any], fields: Mapping[str, Any]) -> None:
    for key, value in fields.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def compose(wheel: Path, *parts: Describes | Mapping[str, Any] | None) -> dict[str, Any]:
    """The manifest of ``wheel``: its name, sha256, size and time, then every part's fields in order."""
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "wheel": wheel.name,
        "sha256": fileio.sha256_of(wheel),
        "size": wheel.stat().st_size,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for part in parts:
        if part is None:
            continue
        _merge(data, part if isinstance(part, Mapping) else part.manifest_fields())
    return data


def write(wheel: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` beside ``wheel``, every string in it (keys too) without credentials."""
    target = path_for(wheel)
    fileio.write_file(target, (json.dumps(redact_tree(data), indent=2) + "\n").encode())
    return target
