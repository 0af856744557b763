"""Provenance: each file a build fetches, with the URL it came from and its sha256.

Fetchers report what they fetched as `Fetched` records: pip's own log says which URL each file it resolved
came from (`from_pip_log`), apt says it with ``--print-uris``, a Debian root's packages are found in the signed
index it was made from. Where files are kept in a cache folder (the sdist, a build root's wheelhouse, a
published index), an ``origins.json`` beside them keeps their records, so that a later build that reuses the
cache can still say where each file came from. The wheel's manifest lists them all (``fetched``).

A record holds its URL without credentials (`redact`): an index's user and token, a link's signed query are
``***`` in every record, so in every file and page made from one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from llamawheel.core import fileio
from llamawheel.core.redact import redact

ORIGINS = "origins.json"
"""The file, in a folder of fetched files, that says where each came from."""

_FOUND = re.compile(r"Found link (\S+) \(from ")
_LOCAL = re.compile(r"(?:Saved|File was already downloaded|Processing) (\S+)$")


@dataclass(frozen=True)
class Fetched:
    """One fetched file: where it is now, the URL it was fetched from ('' when unknown), its sha256 and size."""

    path: Path
    url: str
    sha256: str
    size: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", redact(self.url))

    @property
    def host(self) -> str:
        """The host it came from ('' for a local file)."""
        return urlsplit(self.url).hostname or ""

    def to_json(self) -> dict[str, Any]:
        return {"file": self.path.name, "url": self.url, "sha256": self.sha256, "size": self.size}


def described(path: Path, url: str) -> Fetched:
    return Fetched(path, url, fileio.sha256_of(path), path.stat().st_size)


def pip_links(log_text: str) -> dict[str, str]:
    """Every file name pip's log says it found a link for, with that link's URL (fragment dropped; the name is
    the last part of the path, without a signed link's query)."""
    links: dict[str, str] = {}
    for match in _FOUND.finditer(log_text):
        url = match.group(1).split("#", 1)[0]
        links[unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])] = url
    return links


def from_pip_log(log_text: str, folder: Path) -> list[Fetched]:
    """The files in ``folder`` pip's log (``--log``, verbose) says it saved or found already there, with the URL
    of the link each one came from."""
    links = pip_links(log_text)
    names: dict[str, None] = {}
    for line in log_text.splitlines():
        match = _LOCAL.search(line.strip())
        if match:
            names[Path(match.group(1)).name] = None
    found = [folder / name for name in names if (folder / name).is_file()]
    known = read_origins(folder)
    result = []
    for path in found:
        url = links.get(path.name) or (known[path.name].url if path.name in known else "")
        result.append(described(path, url))
    return result


def read_origins(folder: Path) -> dict[str, Fetched]:
    """The records in ``folder``'s ``origins.json`` (empty when there is none)."""
    try:
        data = json.loads((folder / ORIGINS).read_text())
    except (OSError, ValueError):
        return {}
    return {name: Fetched(folder / name, entry.get("url", ""), entry.get("sha256", ""), int(entry.get("size", 0)))
            for name, entry in data.items() if isinstance(entry, dict)}


def record_origins(folder: Path, fetched: Iterable[Fetched]) -> None:
    """Add ``fetched`` to ``folder``'s ``origins.json`` (a file fetched again keeps its newest URL)."""
    entries = {name: f.to_json() for name, f in read_origins(folder).items()}
    for f in fetched:
        if f.path.parent == folder:
            entries[f.path.name] = f.to_json()
    fileio.write_file(folder / ORIGINS, (json.dumps(dict(sorted(entries.items())), indent=1) + "\n").encode())


def to_json(fetched: Iterable[Fetched]) -> list[dict[str, Any]]:
    """The manifest's list: one entry per file, sorted by name, each file once."""
    unique = {f.path.name: f for f in fetched}
    return [unique[name].to_json() for name in sorted(unique)]


def total_size(fetched: Iterable[Fetched]) -> int:
    return sum(f.size for f in fetched)


def hosts(entries: Iterable[dict[str, Any]]) -> set[str]:
    """The hosts a manifest's ``fetched`` entries came from."""
    return {urlsplit(e.get("url", "")).hostname or "" for e in entries} - {""}
