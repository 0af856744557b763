"""What a cold build costs, from this machine's own builds: each build that compiled (nearly) everything here
records its compile time, jobs and architectures in the cache (``timings.jsonl``); the estimate printed before a
build comes from them (the CPU part from CPU builds; the CUDA part, a share every CUDA build pays plus a share per
architecture, from CUDA builds), else from the costs measured when the recipes were written (2 cores, `BUILTIN`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamawheel.building.cache_stats import Stats
from llamawheel.core import paths
from llamawheel.recipe import archs

COLD_BELOW = 0.05
"""A build whose compile cache served less than this share of compiles counts as cold."""
KEEP = 200


@dataclass(frozen=True)
class CudaCost:
    fixed: float
    """Seconds every CUDA build pays whatever its architectures (nvcc's host passes over the .cu files), 2 cores."""
    per_arch: float
    """Seconds each architecture adds (machine code; PTX alone counts half), 2 cores."""

    def seconds(self, weight: float) -> float:
        return self.fixed + self.per_arch * weight


@dataclass(frozen=True)
class Costs:
    cpu_part: float
    """Seconds of the CPU code (every build has it), on 2 cores."""
    cuda: dict[str, CudaCost]
    """The CUDA code's cost by CUDA minor; ``""``: any minor (the latest measured)."""
    source: str

    def estimate(self, minor: str | None, targets: Sequence[archs.ArchTarget], jobs: int) -> float:
        cuda = self.cuda.get(minor or "", self.cuda.get("", CudaCost(0.0, 0.0)))
        return (self.cpu_part + (cuda.seconds(weight(targets)) if targets else 0.0)) * 2 / max(jobs, 1)


BUILTIN = Costs(445.0, {"": CudaCost(425.0, 740.0)}, "measured on a 2-core machine when the recipes were written")
"""In the Debian 11 root on 2 cores (2026-12): the CPU wheel 7.4 minutes of compiling cold; CUDA 13.0 sm_90 26.2 to
27.4 cold, ``--arch 86,90`` 39.2 (no compile cache): the CPU part, 7.1 minutes that every CUDA build pays, and
12.3 per architecture."""


def weight(targets: Sequence[archs.ArchTarget]) -> float:
    return sum(1.0 for t in targets if t.sass) + sum(0.5 for t in targets if t.ptx and not t.sass)


def _file() -> Path:
    return paths.cache_dir() / "timings.jsonl"


def is_cold(stats: Stats | None) -> bool:
    """Whether a build compiled (nearly) everything here: no compile cache, or one that served under
    `COLD_BELOW` of the compiles and sent none to a farm."""
    if stats is None:
        return True
    total = stats.hits + stats.misses
    return bool(total) and stats.hits / total < COLD_BELOW and not stats.remote_compiles


def record(minor: str | None, targets: Sequence[archs.ArchTarget], jobs: int, seconds: float, build_env: str,
           stats: Stats | None) -> bool:
    """Keep a cold build's numbers (returns whether it was cold); ``stats`` None: built without a compile cache."""
    if not is_cold(stats):
        return False
    line = json.dumps({"minor": minor, "archs": [str(t) for t in targets], "weight": weight(targets), "jobs": jobs,
                       "seconds": round(seconds, 1), "env": build_env, "time": int(time.time())})
    path = _file()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = path.read_text().splitlines()[-(KEEP - 1):] if path.is_file() else []
    path.write_text("\n".join([*lines, line]) + "\n")
    return True


def _fit(points: dict[float, float]) -> CudaCost:
    """The CUDA cost from (weight -> seconds) points: a line through them where two or more weights were measured,
    else `BUILTIN`'s split between the fixed share and the per-architecture share, scaled to this machine."""
    if len(points) >= 2:
        n = len(points)
        mean_w, mean_s = sum(points) / n, sum(points.values()) / n
        slope = sum((w - mean_w) * (s - mean_s) for w, s in points.items()) / sum((w - mean_w) ** 2 for w in points)
        fixed = mean_s - slope * mean_w
        if slope > 0 and fixed >= 0:
            return CudaCost(fixed, slope)
    w, s = max(points.items())  # one weight measured (or a line that makes no sense): keep the built-in shape
    base = BUILTIN.cuda[""]
    scale = s / base.seconds(w)
    return CudaCost(base.fixed * scale, base.per_arch * scale)


def costs(build_env: str) -> Costs:
    """The costs measured for builds in ``build_env`` (host or a root), else `BUILTIN`: the latest CPU build for
    the CPU part; for each CUDA minor the latest build of each architecture weight."""
    try:
        rows: list[dict[str, Any]] = [json.loads(line) for line in _file().read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        rows = []
    rows = [r for r in rows if r.get("env") == build_env]
    cpu_rows = [r for r in rows if r.get("minor") is None]
    cpu_part = cpu_rows[-1]["seconds"] * cpu_rows[-1]["jobs"] / 2 if cpu_rows else BUILTIN.cpu_part
    points: dict[str, dict[float, float]] = {}
    latest = ""
    for r in rows:  # later rows win
        if r.get("minor") and r.get("weight"):
            latest = r["minor"]
            points.setdefault(latest, {})[float(r["weight"])] = max(r["seconds"] * r["jobs"] / 2 - cpu_part, 0.0)
    if not rows:
        return BUILTIN
    cuda = {minor: _fit(p) for minor, p in points.items()}
    cuda[""] = cuda[latest] if points else BUILTIN.cuda[""]
    return Costs(cpu_part, cuda, f"from {len(rows)} cold build(s) measured on this machine")
