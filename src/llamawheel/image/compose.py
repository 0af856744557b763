"""The compose environment (``docker/.env``): which API image and which llama-gpt UI image ``docker compose up``
uses, the UI pulled through the mirror profile's ghcr.io mirror, and the API key the UI and the API share (made
here, once: there is no default key). The user's own variables in the file are kept, their key too."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from llamawheel.core import fileio
from llamawheel.mirror.profiles import MirrorProfile

UI_IMAGE = "getumbrel/llama-gpt-ui:1.0.1"
"""llama-gpt's chat UI on ghcr.io (what its "latest" tag points to; its ids: llama-gpt-contract.md)."""
API_REPOSITORY = "localhost/llamawheel-api"

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


KNOWN_KEYS = ("sk-llamawheel",)
"""Keys that earlier compose files gave everyone (the API image refuses them): replaced."""

SITE_KEY_COMMAND = ("chmod 600 {env} && printf 'API_KEY=sk-%s\\n' \"$(od -An -N32 -tx1 /dev/urandom | tr -d ' \\n')\""
                    " >> {env}   # an API key of this site's own")
"""The shell line that gives an offline site its own key (``{env}``: the env file), where llamawheel is not
installed: an offline bundle carries no key, since it is copied to many sites."""


def new_api_key() -> str:
    """A key nobody else has: 256 random bits."""
    return "sk-" + secrets.token_urlsafe(32)


def read_env(path: Path) -> dict[str, str]:
    """The ``KEY=value`` lines of an env file (the last one of a key wins, as in compose); none if missing."""
    values = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        match = _LINE.match(line)
        if match:
            values[match.group(1)] = line[match.end():].strip().strip("'\"")
    return values


def compose_env(mirror: MirrorProfile, variant: str, current: dict[str, str] | None = None) -> dict[str, str]:
    """``API_IMAGE`` (the local image of ``variant``), ``UI_IMAGE`` (through the profile's ghcr mirror), and a
    new ``API_KEY`` unless ``current`` (the file's values) has one of its own."""
    values = {"API_IMAGE": f"{API_REPOSITORY}:{variant}", "UI_IMAGE": mirror.image("ghcr", UI_IMAGE)}
    key = (current or {}).get("API_KEY", "")
    if not key or key in KNOWN_KEYS:
        values["API_KEY"] = new_api_key()
    return values


def write_env(path: Path, values: dict[str, str]) -> Path:
    """Set ``values`` in the env file ``path`` (made if missing): a line for each key is replaced in place or
    added; every other line stays as it was. Written atomically, readable by its owner only (it holds the key)."""
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
    fileio.write_file(path, ("\n".join(out) + "\n").encode(), mode=0o600)
    return path
