"""What the compile cache did during one build: its tool's counts before and after, as one `Stats`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llamawheel.core import proc
from llamawheel.core.errors import BuildError


@dataclass
class Stats:
    """What the compile cache did during one build."""


    tool: str
    hits: int = 0
    misses: int = 0
    remote_hits: int = 0
    not_cacheable: int = 0
    remote_compiles: int = 0
    remote_errors: int = 0
    """Reads or writes the remote store failed (the compile then ran, or was kept, locally)."""
    by_language: dict[str, list[int]] = field(default_factory=dict)
    """sccache: language -> [hits, misses] (nvcc's steps count apart: CUDA, PTX, CUBIN, C/C++)."""


    def describe(self) -> str:
        total = self.hits + self.misses
        if not total:
            return f"{self.tool}: no cacheable compiles seen"
        text = f"{self.tool}: {self.hits} of {total} compiles served from cache ({100 * self.hits // total}%"
        if self.remote_hits:
            text += f", {self.remote_hits} from the remote store"
        text += ")"
        if self.remote_compiles:
            text += f"; {self.remote_compiles} compiled on the farm"
        if self.remote_errors:
            text += f"; the remote store failed {self.remote_errors} time(s) (those compiles used the local store)"
        return text


    def to_json(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "remote_hits": self.remote_hits,
                "not_cacheable": self.not_cacheable, "remote_compiles": self.remote_compiles,
                "remote_errors": self.remote_errors,
                "by_language": self.by_language}


def ccache_stats(text: str) -> dict[str, int]:
    """``ccache --print-stats`` as numbers."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition("\t")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def ccache_delta(before: Mapping[str, int], after: Mapping[str, int]) -> Stats:
    def d(key: str) -> int:
        return after.get(key, 0) - before.get(key, 0)
    hits = d("direct_cache_hit") + d("preprocessed_cache_hit")
    return Stats("ccache", hits, d("cache_miss"), remote_hits=d("remote_storage_hit"),
                 remote_errors=d("remote_storage_error") + d("remote_storage_timeout"),
                 not_cacheable=sum(d(k) for k in ("unsupported_compiler_option", "unsupported_source_language",
                                                   "could_not_use_modules", "multiple_source_files")))


def sccache_stats(data: Mapping[str, Any]) -> Stats:
    """``sccache --show-stats --stats-format=json`` of one server's life (it starts and stops with the build)."""
    stats = data.get("stats", {})
    hits = stats.get("cache_hits", {}).get("counts", {})
    misses = stats.get("cache_misses", {}).get("counts", {})
    languages = sorted(set(hits) | set(misses))
    levels = stats.get("multi_level") or []
    remote_hits = sum(int(level.get("hits", 0)) for level in levels[1:])
    remote_errors = sum(int(level.get("write_failures", 0)) for level in levels[1:])
    dist = stats.get("dist_compiles") or {}
    return Stats("sccache", sum(hits.values()), sum(misses.values()), remote_hits=remote_hits,
                 not_cacheable=int(stats.get("requests_not_cacheable", 0)),
                 remote_compiles=sum(int(v) for v in dist.values()), remote_errors=remote_errors,
                 by_language={lang: [int(hits.get(lang, 0)), int(misses.get(lang, 0))] for lang in languages})


def run_quiet(cmd: list[str], env: Mapping[str, str] | None) -> str:
    """The standard output of the compile cache's tool asked for its counts (``ccache --print-stats``), ``env``
    laid over this process's environment (`proc.child_env`). A failure is a `BuildError`: an empty answer would
    read as counts of zero, and the build's counts as negative."""
    return proc.capture(cmd, error=BuildError, what="the compile cache could not report its counts", env=env,
                        tip="--compile-cache none builds without it")
