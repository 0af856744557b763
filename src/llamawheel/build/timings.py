"""What a cold build costs, from this machine's own builds: each build that compiled (nearly) everything records its
compile time, jobs and architectures in the cache (``timings.jsonl``); the estimate printed before a build comes
from the latest of those (the CPU part from CPU builds, each architecture's share from CUDA builds), else from the
costs measured when the recipes were written (2 cores, `BUILTIN`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llamawheel.core import paths
from llamawheel.recipe import archs

COLD_BELOW = 0.05
"""A build whose compile cache served less than this share of compiles counts as cold."""
KEEP = 200


@dataclass(frozen=True)
class Costs:
    cpu_part: float
    """Seconds of the CPU code (every build has it), on 2 cores."""
    per_arch: dict[str, float]
    """Seconds of one architecture's CUDA code (machine code; PTX alone counts half), on 2 cores, by CUDA minor;
    ``""``: any minor."""
    source: str

    def estimate(self, minor: str | None, targets: Sequence[archs.ArchTarget], jobs: int) -> float:
        per_arch = self.per_arch.get(minor or "", self.per_arch.get("", 0.0))
        return (self.cpu_part + per_arch * weight(targets)) * 2 / max(jobs, 1)


BUILTIN = Costs(445.0, {"": 1300.0}, "measured on a 2-core machine when the recipes were written")
"""In the Debian 11 root on 2 cores (sccache, 2026-12): the CPU wheel 7.4 minutes of compiling cold; CUDA 13.0 sm_90
27.4 minutes cold (20 after the CPU part), sm_86 23.6 with the CPU part from the cache: about 21.7 per
architecture."""


def weight(targets: Sequence[archs.ArchTarget]) -> float:
    return sum(1.0 for t in targets if t.sass) + sum(0.5 for t in targets if t.ptx and not t.sass)


def _file() -> Path:
    return paths.cache_dir() / "timings.jsonl"


def record(minor: str | None, targets: Sequence[archs.ArchTarget], jobs: int, seconds: float, hits: int,
           misses: int, build_env: str) -> bool:
    """Keep a cold build's numbers (returns whether it was cold)."""
    if misses == 0 or hits / (hits + misses) >= COLD_BELOW:
        return False
    line = json.dumps({"minor": minor, "archs": [str(t) for t in targets], "weight": weight(targets), "jobs": jobs,
                       "seconds": round(seconds, 1), "env": build_env, "time": int(time.time())})
    path = _file()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = path.read_text().splitlines()[-(KEEP - 1):] if path.is_file() else []
    path.write_text("\n".join([*lines, line]) + "\n")
    return True


def costs(build_env: str) -> Costs:
    """The latest measured costs for builds in ``build_env`` (host or a root), else `BUILTIN`."""
    try:
        rows = [json.loads(line) for line in _file().read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        rows = []
    rows = [r for r in rows if r.get("env") == build_env]
    cpu_rows = [r for r in rows if r.get("minor") is None]
    cpu_part = cpu_rows[-1]["seconds"] * cpu_rows[-1]["jobs"] / 2 if cpu_rows else BUILTIN.cpu_part
    per_arch: dict[str, float] = {}
    for r in rows:  # later rows win
        if r.get("minor") and r.get("weight"):
            per_arch[r["minor"]] = max(r["seconds"] * r["jobs"] / 2 - cpu_part, 0.0) / r["weight"]
    if not per_arch and not cpu_rows:
        return BUILTIN
    if per_arch:
        per_arch[""] = list(per_arch.values())[-1]
    else:
        per_arch = dict(BUILTIN.per_arch)
    return Costs(cpu_part, per_arch, f"from {len(rows)} cold build(s) measured on this machine")
