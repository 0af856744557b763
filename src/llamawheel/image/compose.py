"""The compose environment (``docker/.env``): which API image and which llama-gpt UI image ``docker compose up``
uses, the UI pulled through the mirror profile's ghcr.io mirror. The user's own variables in the file are kept."""

from __future__ import annotations

import re
from pathlib import Path

from llamawheel.core import fileio
from llamawheel.mirror.profiles import MirrorProfile

UI_IMAGE = "getumbrel/llama-gpt-ui:1.0.1"
"""llama-gpt's chat UI on ghcr.io (what its "latest" tag points to; its ids: llama-gpt-contract.md)."""
API_REPOSITORY = "localhost/llamawheel-api"

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def compose_env(mirror: MirrorProfile, variant: str) -> dict[str, str]:
    """``API_IMAGE`` (the local image of ``variant``) and ``UI_IMAGE`` (through the profile's ghcr mirror)."""
    return {"API_IMAGE": f"{API_REPOSITORY}:{variant}", "UI_IMAGE": mirror.image("ghcr", UI_IMAGE)}


def write_env(path: Path, values: dict[str, str]) -> Path:
    """Set ``values`` in the env file ``path`` (made if missing): a line for each key is replaced in place or
    added; every other line stays as it was. Written atomically."""
    lines = path.read_text().splitlines() if path.is_file() else []
    left = dict(values)
    out = []
    for line in lines:
        match = _LINE.match(line)
        if match and match.group(1) in values:
            if match.group(1) in left:
                out.append(f"{match.group(1)}={left.pop(match.group(1))}")
            continue  # a second line for the same key would override the first: dropped
        out.append(line)
    out += [f"{key}={value}" for key, value in left.items()]
    fileio.write_file(path, ("\n".join(out) + "\n").encode())
    return path
