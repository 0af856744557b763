"""The JSON manifest beside every wheel: what is in it and how it was built."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamawheel import archs, atomic
from llamawheel.pipfetch import sha256_of

if TYPE_CHECKING:
    from llamawheel.build import BuildResult
    from llamawheel.pipeline import Plan
    from llamawheel.repair import RepairedWheel
    from llamawheel.toolchain import CudaRoot
    from llamawheel.verify_static import Report

SUFFIX = ".json"


def path_for(wheel: Path) -> Path:
    return wheel.with_name(wheel.name + SUFFIX)


def build_manifest(
    *,
    plan: Plan,
    root: CudaRoot | None,
    archive: Path | None,
    cmake_args: list[str],
    raw_wheel: Path,
    repaired: RepairedWheel,
    build: BuildResult,
    durations: dict[str, float],
    tools: dict[str, str],
    report: Report | None,
) -> dict[str, Any]:
    wheel = repaired.path
    return {
        "schema": 1,
        "wheel": wheel.name,
        "sha256": sha256_of(wheel),
        "size": wheel.stat().st_size,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "variant": plan.local_version,
        "recipe": {"name": plan.recipe.name, "file": plan.recipe.path.name},
        "cuda": None if plan.minor is None else {
            "version": plan.minor.version,
            "provider": root.provider if root else None,
            "origin": root.origin if root else None,
            "nvcc": root.nvcc_version if root else None,
            "toolchain_download_bytes": root.download_bytes if root else None,
            "packages": [f"{p.name}=={p.version}" for p in plan.minor.packages],
        },
        "architectures": [t.cmake() for t in plan.targets],
        "cmake_architectures": archs.cmake_value(plan.targets) if plan.targets else None,
        "runtime": plan.options.runtime if plan.minor else "none",
        "requires": list(plan.minor.runtime_requires) if plan.minor and plan.options.runtime == "pypi" else [],
        "source": {
            "name": plan.source.name,
            "version": plan.source.version,
            "sha256": plan.source.sha256,
            "file": archive.name,
        } if archive is not None else {"local_tree": str(plan.options.source)},
        "mirror": {"name": plan.mirror.name, "pypi": plan.mirror.pypi_index() or "pip's own default"},
        "cmake_args": cmake_args,
        "build": {
            "jobs": build.jobs,
            "steps": build.steps,
            "compile_cache": build.cache.describe() if build.cache else "none",
            "cache_hits": build.cache.hits if build.cache else 0,
            "cache_misses": build.cache.misses if build.cache else 0,
            "host": f"{platform.system()} {platform.machine()}",
        },
        "repair": {
            "plain_wheel_size": raw_wheel.stat().st_size,
            "dropped_files": len(repaired.dropped),
            "duplicates_removed": repaired.duplicates,
            "grafted": repaired.grafted,
            "platform_tag": repaired.platform_tag,
            "libraries": repaired.libraries,
        },
        "durations_seconds": {k: round(v, 1) for k, v in durations.items()},
        "tools": tools,
        "verify_static": None if report is None else {
            "ok": report.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks],
        },
    }


def write(wheel: Path, data: dict[str, Any]) -> Path:
    target = path_for(wheel)
    atomic.write_file(target, (json.dumps(data, indent=2) + "\n").encode())
    return target
