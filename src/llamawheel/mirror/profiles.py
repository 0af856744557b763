"""Mirror profiles: where pip, uv, apt and image pulls fetch from.

A profile is a TOML file in ``mirrors/`` (or any path a user passes). Every URL is
optional; an empty one means "leave that client as this machine configured it".
The ``default`` profile is all empty: pip and apt keep their own configuration.
A mirror can make a build slower or fail, never change what is built: every
download is checked against a pinned hash.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamawheel.core import datafile, log, paths, records
from llamawheel.core.errors import MirrorError, did_you_mean
from llamawheel.core.records import DERIVED


def _url(value: str) -> str | None:
    if value and not value.startswith(("http://", "https://", "file://")):
        return f"'{value}' is not an http(s) or file URL"
    return None


_URL: dict[str, Any] = {"check": _url}


@dataclass(frozen=True)
class MirrorProfile:
    """A mirror profile: where each upstream is fetched from. An empty entry leaves that client as this
    machine configured it."""

    name: str = field(default="", metadata=DERIVED)
    path: Path = field(default=Path(), metadata=DERIVED)
    description: str = ""
    """One line for ``llamawheel mirrors list``."""
    pypi: str = field(default="", metadata=_URL)
    """A PEP 503 simple index, used by pip (PIP_INDEX_URL) and uv (UV_DEFAULT_INDEX)."""
    debian: str = field(default="", metadata=_URL)
    """Base URL of a Debian archive mirror (holds dists/bookworm, dists/trixie)."""
    debian_security: str = field(default="", metadata=_URL)
    """Base URL of a Debian security archive mirror (holds dists/bookworm-security)."""
    ubuntu: str = field(default="", metadata=_URL)
    """Base URL of an Ubuntu archive mirror."""
    cuda_apt: str = field(default="", metadata=_URL)
    """A mirror of NVIDIA's CUDA apt repository (the folder that holds ubuntu2404/, debian12/ ...)."""
    registry: str = ""
    """A container registry mirror for base image pulls (host[/prefix])."""

    def urls(self) -> dict[str, str]:
        return {key: getattr(self, key.replace("-", "_")) for key in UPSTREAMS}

    def apt_url(self, upstream: str) -> str:
        """The archive URL apt uses for ``upstream`` (``debian``, ``debian-security``, ``ubuntu``, ``cuda-apt``):
        this profile's, else the one this machine's apt is configured with (none for ``cuda-apt``); '' if neither."""
        own: str = self.urls().get(upstream, "")
        if own or upstream == "cuda-apt":
            return own
        system = system_apt_uris()
        security = upstream.endswith("-security")
        ubuntu = upstream.startswith("ubuntu")
        return next((u for u in system if ("security" in u) == security and ("ubuntu" in u) == ubuntu), "")

    def debian_sources(self, suite: str) -> list[str]:
        """apt lines for Debian ``suite`` (main, updates, security): this profile's Debian mirror, else this
        machine's apt configuration; none when neither names a Debian archive."""
        debian = self.apt_url("debian")
        if not debian:
            return []
        lines = [f"deb {debian} {suite} main", f"deb {debian} {suite}-updates main"]
        security = self.apt_url("debian-security")
        if security:
            lines.append(f"deb {security} {suite}-security main")
        else:
            log.warn(f"no Debian security mirror configured: Debian {suite} gets no security updates")
        return lines

    def pypi_index(self) -> str:
        """The index pip will really use: this profile's, else pip's own configuration."""
        return self.pypi or pip_configured_index()

    def pip_env(self) -> dict[str, str]:
        """Environment for pip subprocesses; empty for the default profile."""
        return {"PIP_INDEX_URL": self.pypi} if self.pypi else {}

    def uv_env(self) -> dict[str, str]:
        """Environment for uv, which does not read pip's configuration."""
        index = self.pypi_index()
        return {"UV_DEFAULT_INDEX": index} if index else {}


def _profile(path: Path, name: str) -> MirrorProfile:
    return records.load(MirrorProfile, datafile.load(path, MirrorError), name=name, path=path)


UPSTREAMS = tuple(key for key in records.file_fields(MirrorProfile) if key != "description")
"""The upstreams a profile maps: pypi, debian, debian-security, ubuntu, cuda-apt, registry."""


def available() -> dict[str, Path]:
    return {p.stem: p for p in sorted(paths.mirrors_dir().glob("*.toml"))}


def load_profile(name_or_path: str | None) -> MirrorProfile:
    """Load a shipped profile by name, or a user's profile by path."""
    choice = name_or_path or os.environ.get("LLAMAWHEEL_MIRROR") or "default"
    known = available()
    if choice in known:
        return _profile(known[choice], choice)
    candidate = Path(choice).expanduser()
    if candidate.suffix == ".toml" or os.sep in choice:
        if not candidate.is_file():
            raise MirrorError(f"mirror profile file {candidate} does not exist")
        return _profile(candidate, candidate.stem)
    raise MirrorError(
        f"unknown mirror profile '{choice}'{did_you_mean(choice, known)}",
        f"known profiles: {', '.join(known)}; or pass the path of your own .toml profile",
    )


def pip_configured_index() -> str:
    """pip's own index URL from its environment or configuration, '' if it uses its built-in default."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(".index-url"):
            return value.strip().strip("'\"")
    return ""


def system_apt_uris() -> list[str]:
    """The archive URLs this machine's apt is configured with."""
    uris: list[str] = []
    etc = Path("/etc/apt")
    for f in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]:
        if not f.is_file():
            continue
        for line in f.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("deb ") or line.startswith("deb-src "):
                parts = [p for p in line.split() if not p.startswith("[")]
                if len(parts) > 1:
                    uris.append(parts[1])
            elif line.startswith("URIs:"):
                uris.extend(line.split()[1:])
    return list(dict.fromkeys(uris))
