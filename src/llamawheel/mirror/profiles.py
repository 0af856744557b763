"""Mirror profiles: where pip, apt and image pulls fetch from.

A profile is a TOML file in ``mirrors/`` (or any path a user passes). Every URL is
optional; an empty one means "leave that client as this machine configured it".
The ``default`` profile is all empty: pip and apt keep their own configuration.
A mirror can make a build slower or fail, never change what is built: every
download is checked against a pinned hash.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from llamawheel.core import datafile, log, paths, proc, records
from llamawheel.core.errors import MirrorError, did_you_mean
from llamawheel.core.records import DERIVED
from llamawheel.core.redact import redact


def _url(value: str) -> str | None:
    if value and not value.startswith(("http://", "https://", "file://")):
        return f"'{value}' is not an http(s) or file URL"
    return None


def _registry(value: str) -> str | None:
    if "://" in value or value.endswith("/") or " " in value:
        return f"'{value}' is not a registry reference: write host or host/prefix, no scheme, no trailing /"
    return None


_URL: dict[str, Any] = {"check": _url}
_REGISTRY: dict[str, Any] = {"check": _registry}

NVIDIA_CUDA_APT = "https://developer.download.nvidia.com/compute/cuda/repos/"
"""NVIDIA's own CUDA apt repository: what ``cuda-apt`` means when a profile leaves it empty."""
REGISTRY_DEFAULTS = {"dockerhub": "docker.io", "ghcr": "ghcr.io"}
"""The registries themselves, for a profile that names no mirror of them."""


@dataclass(frozen=True)
class MirrorProfile:
    """A mirror profile: where each upstream is fetched from. An empty entry leaves that client as this
    machine configured it."""

    name: str = field(default="", metadata=DERIVED)
    path: Path = field(default=Path(), metadata=DERIVED)
    description: str = ""
    """One line for ``llamawheel mirrors list``."""
    pypi: str = field(default="", metadata=_URL)
    """A PEP 503 simple index: with one, pip uses it and nothing else (see `pip_env`)."""
    debian: str = field(default="", metadata=_URL)
    """Base URL of a Debian archive mirror (holds dists/bookworm, dists/trixie)."""
    debian_security: str = field(default="", metadata=_URL)
    """Base URL of a Debian security archive mirror (holds dists/bookworm-security)."""
    ubuntu: str = field(default="", metadata=_URL)
    """Base URL of an Ubuntu archive mirror."""
    cuda_apt: str = field(default="", metadata=_URL)
    """NVIDIA's CUDA apt repository or a mirror of it (the folder that holds ubuntu2404/, debian12/ ...);
    empty: NVIDIA's own (`NVIDIA_CUDA_APT`)."""
    dockerhub: str = field(default="", metadata=_REGISTRY)
    """A Docker Hub mirror (``host`` or ``host/prefix``): Debian's base image is pulled as
    ``<dockerhub>/library/debian:...``; empty: Docker Hub itself."""
    ghcr: str = field(default="", metadata=_REGISTRY)
    """A ghcr.io mirror (``host`` or ``host/prefix``): llama-gpt's UI is pulled as
    ``<ghcr>/getumbrel/llama-gpt-ui:...``; empty: ghcr.io itself."""

    def urls(self) -> dict[str, str]:
        return {key: getattr(self, key.replace("-", "_")) for key in UPSTREAMS}

    def apt_url(self, upstream: str) -> str:
        """The archive URL apt uses for ``upstream`` (``debian``, ``debian-security``, ``ubuntu``, ``cuda-apt``):
        this profile's, else the one this machine's apt is configured with (NVIDIA's own for ``cuda-apt``); '' if
        neither."""
        own: str = self.urls().get(upstream, "")
        if own:
            return own
        if upstream == "cuda-apt":
            return NVIDIA_CUDA_APT
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

    def image(self, registry: str, path: str) -> str:
        """The reference to pull ``path`` (``library/debian:bookworm-slim``) of ``registry`` (``dockerhub`` or
        ``ghcr``) with: through this profile's mirror of it, else from the registry itself."""
        mirror: str = getattr(self, registry)
        return f"{mirror or REGISTRY_DEFAULTS[registry]}/{path}"

    def pypi_index(self) -> str:
        """The index pip will really use, as messages and manifests show it: this profile's, else pip's own
        configuration, its credentials shown as ``***`` (`redact`)."""
        return redact(self.pypi or pip_configured_index())

    def pip_env(self) -> dict[str, str]:
        """Environment for pip subprocesses (`proc.UNSET` values remove a variable). Empty for a profile that
        names no index: pip keeps this machine's configuration. With an index, pip sees only that index: no
        configuration file is read (``PIP_CONFIG_FILE`` is the null device), every other ``PIP_*`` variable is
        removed, and only the settings that cannot send pip elsewhere (`KEPT_PIP_SETTINGS`: certificates,
        timeouts, retries, proxy) are carried over."""
        if not self.pypi:
            return {}
        return isolated_pip_env(self.pypi)


def _profile(path: Path, name: str) -> MirrorProfile:
    table = datafile.load(path, MirrorError)
    if "registry" in table.data:
        raise table.fail("registry", "the one 'registry' key is now two: 'dockerhub' (Debian's base image) and "
                                     "'ghcr' (llama-gpt's UI)", "rename it to the registry it mirrors")
    return records.load(MirrorProfile, table, name=name, path=path)


UPSTREAMS = tuple(key for key in records.file_fields(MirrorProfile) if key != "description")
"""The upstreams a profile maps: pypi, debian, debian-security, ubuntu, cuda-apt, dockerhub, ghcr."""


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


KEPT_PIP_SETTINGS = ("cert", "client-cert", "timeout", "default-timeout", "retries", "proxy",
                     "disable-pip-version-check", "progress-bar")
"""pip settings a profile's index keeps from the user's configuration: they change how pip connects, never where
it fetches from."""


def pip_settings() -> dict[str, str]:
    """pip's configuration as ``pip config list`` reports it, environment included: ``{"global.find-links":
    "/opt/wheels", ":env:.cert": ...}``."""
    done = proc.probe([sys.executable, "-m", "pip", "config", "list"], timeout=30)
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines() if done is not None else []:
        key, sep, value = line.partition("=")
        if sep:
            settings[key.strip()] = value.strip().strip("'\"")
    return settings


@cache
def _set_aside_notice(index: str, dropped: tuple[str, ...]) -> None:
    log.info(f"pip uses only the profile's index {index}: this machine's pip settings {', '.join(dropped)} are "
             "set aside for it (--mirror default keeps them)")


def isolated_pip_env(index: str) -> dict[str, str]:
    """The environment that makes pip use ``index`` and nothing else (see `MirrorProfile.pip_env`); says once
    which of the user's settings it set aside."""
    env = proc.unset_all("PIP_")
    dropped: list[str] = []
    for key, value in pip_settings().items():
        name = key.rpartition(".")[2]
        if name in KEPT_PIP_SETTINGS:
            env["PIP_" + name.upper().replace("-", "_")] = value
        elif name not in ("index-url",):
            dropped.append(name)
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index)
    if dropped:
        _set_aside_notice(index, tuple(sorted(set(dropped))))
    return env


def pip_configured_index() -> str:
    """pip's own index URL from its environment or configuration, '' if it uses its built-in default."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    return next((v for k, v in pip_settings().items() if k.rpartition(".")[2] == "index-url"), "")


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
