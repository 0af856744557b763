"""The compile cache: sccache or ccache (`cache_tools`), with a local store in llamawheel's cache and, optionally, a
shared remote store or, for sccache, a build farm (`cache_stores`); what one build's compiles did (`cache_stats`).
This module chooses among them and checks the choice before anything is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamawheel.building.cache_stats import Stats
from llamawheel.building.cache_stores import Farm, Remote, farm_from, parse_remote, preflight
from llamawheel.building.cache_tools import PINS, install
from llamawheel.core import log, paths
from llamawheel.core.errors import NotOnMirror, UsageError, did_you_mean
from llamawheel.mirror.profiles import MirrorProfile

CHOICES = ("sccache", "ccache", "none")


DEFAULT = "ccache"
"""The default tool: level with sccache cold, and 4 times faster served for the CUDA wheel (from the local store and
from a remote one: ``scripts/bench-compile-cache.py``; docs/benchmarks.md has the table). sccache is taken instead where
only it can work: an S3 or GitHub Actions' cache store, or a build farm (`default_for`)."""


SCCACHE_ONLY = ("s3", "gha")
"""Stores only sccache speaks."""


@dataclass
class CompileCache:
    """The tool a build runs its compiles through, where its local store is, and what it shares."""


    tool: str
    """sccache, ccache or none."""
    bin_dir: Path | None = None
    store: Path | None = None
    remote: Remote | None = None
    farm: Farm | None = None


    @property
    def binary(self) -> Path | None:
        return self.bin_dir / self.tool if self.bin_dir is not None and self.tool != "none" else None


    @property
    def needs_network(self) -> bool:
        return self.remote is not None or self.farm is not None


    def manifest_fields(self, stats: Stats | None) -> dict[str, Any]:
        """For the manifest: the tool, its store and the counts; never a credential."""
        if self.tool == "none":
            return {"tool": "none"}
        return {"tool": PINS[self.tool].label, "backend": f"local+{self.remote.backend}" if self.remote else "local",
                "remote": self.remote.url if self.remote else None,
                "farm": self.farm.scheduler if self.farm else None,
                **(stats.to_json() if stats else {})}


def check(tool: str, url: str | None, farm_url: str | None,
          environ: Mapping[str, str] | None = None) -> tuple[Remote | None, Farm | None]:
    """What ``--compile-cache``, ``--compile-cache-url`` and ``--farm`` name, checked together; errors for what
    cannot work."""
    env = os.environ if environ is None else environ
    if tool not in CHOICES:
        raise UsageError(f"--compile-cache {tool}: choose one of {', '.join(CHOICES)}{did_you_mean(tool, CHOICES)}")
    remote = parse_remote(url) if url else None
    farm = farm_from(farm_url, env)
    if tool == "none" and (remote or farm):
        raise UsageError("--compile-cache none cannot use a remote store or a farm",
                         "drop --compile-cache-url/--farm, or use --compile-cache sccache")
    if farm and tool != "sccache":
        raise UsageError("--farm needs --compile-cache sccache (sccache-dist is sccache's build farm)")
    if remote is not None and tool == "ccache":
        remote.ccache_url(env)  # refuses a store ccache cannot use
    return remote, farm


def default_for(url: str | None, farm_url: str | None) -> str:
    """The tool a build that names none uses: `DEFAULT`, or sccache where the store or a farm needs it."""
    remote = parse_remote(url) if url else None
    if farm_url or (remote is not None and remote.backend in SCCACHE_ONLY):
        return "sccache"
    return DEFAULT


def resolve(tool: str | None, url: str | None, farm_url: str | None, mirror: MirrorProfile) -> CompileCache:
    """The compile cache a build asked for (None: the default), its tool installed (once) through ``mirror``.


    A mirror that does not carry the default tool costs speed, not the build: it goes on without a compile cache
    and says so. A tool the user named, or one a remote store or farm needs, must be there."""
    chosen = tool or default_for(url, farm_url)
    remote, farm = check(chosen, url, farm_url)
    if chosen == "none":
        return CompileCache("none")
    if remote is not None:
        preflight(remote, os.environ)
    pin = PINS[chosen]
    try:
        bin_dir = install(chosen, mirror)
    except NotOnMirror as exc:
        if tool is not None or remote is not None or farm is not None:
            raise NotOnMirror(f"the compile cache {pin.label} could not be installed: {exc.message}",
                              f"add {pin.project}=={pin.version} to the mirror, choose another --mirror, or build "
                              "with --compile-cache none") from None
        log.warn(f"the {mirror.name} index does not offer {pin.project}=={pin.version}: building without a compile "
                 "cache, so a rebuild compiles everything again (add it to the mirror, or pass --compile-cache none "
                 "to choose this)")
        return CompileCache("none")
    return CompileCache(chosen, bin_dir, paths.compile_stores_dir() / chosen, remote, farm)
