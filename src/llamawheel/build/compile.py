"""Compiling a wheel: scikit-build-core through ``pip wheel``, with CMake/ninja, a
compile cache (ccache, else sccache) for C, C++ and CUDA, parallelism bounded by
memory as well as cores, and the ninja step count shown as it goes."""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamawheel.build.rootbuild import BUILD_DIR, CUDA_DIR, Runner
from llamawheel.core import log, paths
from llamawheel.core.errors import BuildError
from llamawheel.core.proc import CommandFailed, child_env, run_streamed

_STEP = re.compile(r"^\[(\d+)/(\d+)\] ")
# nvcc on llama.cpp's largest template instances peaks near 3 GB; a C++ job needs far less.
MEMORY_PER_JOB = {"cuda": 3.0e9, "cpu": 1.2e9}


def available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3


def default_jobs(kind: str) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    by_memory = int(available_memory() // MEMORY_PER_JOB.get(kind, 2e9))
    return max(1, min(cores, by_memory))


def find_compile_cache() -> Path | None:
    for name in ("ccache", "sccache"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


@dataclass
class CacheStats:
    tool: str
    hits: int = 0
    misses: int = 0

    def describe(self) -> str:
        total = self.hits + self.misses
        if not total:
            return f"{self.tool}: no cacheable compiles seen"
        return f"{self.tool}: {self.hits} of {total} compiles served from cache ({100 * self.hits // total}%)"


def _ccache_stats(tool: Path, env: dict[str, str], runner: Runner) -> tuple[int, int]:
    if tool.name != "ccache":
        return 0, 0
    cmd, extra = runner.command([str(tool), "--print-stats"], env)
    out = subprocess.run(cmd, capture_output=True, text=True, env=child_env(extra)).stdout
    stats = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    hits = int(stats.get("direct_cache_hit", 0)) + int(stats.get("preprocessed_cache_hit", 0))
    misses = int(stats.get("cache_miss", 0))
    return hits, misses


@dataclass
class BuildRequest:
    source: Path
    """An unpacked source tree (it is built in place)."""
    work: Path
    """A folder of this build's own: the CMake tree and the raw wheel go there."""
    cmake_args: list[str]
    jobs: int
    kind: str = "cpu"
    env: dict[str, str] = field(default_factory=dict)
    log_file: Path | None = None
    runner: Runner = field(default_factory=Runner)
    """Where the build runs: this machine, or a build root."""
    source_date_epoch: int = 315532800
    """The time every timestamp in the build says (``SOURCE_DATE_EPOCH``), so that the same inputs give the same
    wheel: the sdist's own date, else 1980-01-01 (the earliest a zip file can hold)."""
    cuda_root: Path | None = None


@dataclass
class BuildResult:
    wheel: Path
    seconds: float
    steps: int
    cache: CacheStats | None
    jobs: int
    log_file: Path | None
    cmake_args: list[str] = field(default_factory=list)

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "cmake_args": self.cmake_args,
            "build": {
                "jobs": self.jobs,
                "steps": self.steps,
                "compile_cache": self.cache.describe() if self.cache else "none",
                "cache_hits": self.cache.hits if self.cache else 0,
                "cache_misses": self.cache.misses if self.cache else 0,
                "host": f"{platform.system()} {platform.machine()}",
            },
        }


class Progress:
    """Prints ninja's ``[n/m]`` as a line every few seconds, with a rough estimate."""

    def __init__(self, every: float = 15.0) -> None:
        self.every = every
        self.start = time.monotonic()
        self.last = 0.0
        self.steps = 0
        self.total = 0

    def __call__(self, line: str) -> None:
        match = _STEP.match(line.lstrip())
        if not match:
            return
        self.steps, self.total = int(match.group(1)), int(match.group(2))
        now = time.monotonic()
        if now - self.last < self.every and self.steps != self.total:
            return
        self.last = now
        elapsed = now - self.start
        pct = 100 * self.steps // max(self.total, 1)
        eta = ""
        if 0 < self.steps < self.total and elapsed > 30:
            eta = f", roughly {log.human_time(elapsed / self.steps * (self.total - self.steps))} left"
        log.info(f"compiling [{self.steps}/{self.total}] {pct}%, {log.human_time(elapsed)} elapsed{eta}")


def _compile_cache(runner: Runner) -> tuple[Path | None, Path]:
    """The compile cache tool and its store: this machine's ccache (else sccache) in ``ccache/``, or the build
    root's own ccache in a store of its own (``ccache-bullseye/``: another ccache version, other compilers)."""
    if runner.root is None:
        return find_compile_cache(), paths.compile_cache_dir()
    tool = Path("/usr/bin/ccache")
    return (tool if (runner.root.path / "usr/bin/ccache").exists() else None), \
        paths.cache_dir() / f"ccache-{runner.root.suite}"


def _with_compile_cache(env: dict[str, str], work: Path, runner: Runner) -> tuple[Path | None, Runner]:
    """Route C, C++ and CUDA compiles through ccache (else sccache) via CMake's launchers, with ggml's own
    ccache detection off so nothing is wrapped twice; returns the tool (None when there is none) and the runner,
    which binds a store linked in from elsewhere (shared by several caches) into the root too."""
    tool, store = _compile_cache(runner)
    if tool is None:
        log.warn("no ccache or sccache on PATH: every compile runs cold (apt-get install ccache)")
        return None, runner
    if store.is_symlink():
        store = store.resolve()
        if runner.root is not None:
            store.mkdir(parents=True, exist_ok=True)
            runner = dataclasses.replace(runner, binds=(*runner.binds, store))
    env["CMAKE_ARGS"] += " " + shlex.join(
        [f"-DCMAKE_{lang}_COMPILER_LAUNCHER={tool}" for lang in ("C", "CXX", "CUDA")] + ["-DGGML_CCACHE=OFF"]
    )
    env.update(
        CCACHE_DIR=str(store),
        CCACHE_BASEDIR=str(work),
        CCACHE_MAXSIZE=os.environ.get("CCACHE_MAXSIZE", "20G"),
        CCACHE_SLOPPINESS="time_macros,include_file_mtime,include_file_ctime",
        CCACHE_NOHASHDIR="1",
        SCCACHE_DIR=str(store / "sccache"),
    )
    log.info(f"compile cache: {tool.name} at {store}")
    return tool, runner


def _reproducible(env: dict[str, str], req: BuildRequest) -> None:
    """What makes two builds of the same inputs give the same bytes: one time for every timestamp, and no path of
    this machine in the libraries. In a root the build's folder and the CUDA root are seen at fixed paths anyway;
    on this machine the compilers are told to write those paths instead (``-ffile-prefix-map``)."""
    env["SOURCE_DATE_EPOCH"] = str(req.source_date_epoch)
    if req.runner.root is not None:
        return
    maps = [f"-ffile-prefix-map={req.work}={BUILD_DIR}"]
    if req.cuda_root is not None:
        maps.append(f"-ffile-prefix-map={req.cuda_root}={CUDA_DIR}")
    for var in ("CFLAGS", "CXXFLAGS"):
        env[var] = " ".join([os.environ.get(var, ""), *maps]).strip()
    env["CUDAFLAGS"] = " ".join([os.environ.get("CUDAFLAGS", ""), *(f"-Xcompiler={m}" for m in maps)]).strip()


def _pip_wheel(req: BuildRequest, env: dict[str, str], tree: Path, raw: Path, progress: Progress) -> float:
    """Run scikit-build-core through ``pip wheel``, showing ninja's progress; returns the seconds it took."""
    python = req.runner.python or sys.executable
    start = time.monotonic()
    try:
        if req.runner.root is not None:  # Debian 11's pip 20.3 knows no -C: the wheelhouse has a newer one
            cmd, extra = req.runner.command([python, "-m", "pip", "install", "--upgrade", "--quiet", "pip"], env)
            run_streamed(cmd, env=extra, log_file=req.log_file)
            where = f"in the {req.runner.root.suite} root ({req.runner.root.path}), network cut"
        else:
            where = "on this machine"
        cmd, extra = req.runner.command([
            python, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(raw),
            "-C", f"build-dir={tree}", "-C", "cmake.build-type=Release", str(req.source),
        ], env)
        log.info(f"building {where} with {req.jobs} parallel job(s); full log: {req.log_file}")
        run_streamed(cmd, env=extra, log_file=req.log_file, on_line=progress, keep=60)
    except CommandFailed as exc:
        raise BuildError(
            f"the build failed after {log.human_time(time.monotonic() - start)}\n{exc.describe()}",
            f"the full log is {req.log_file}",
        ) from None
    return time.monotonic() - start


def build_wheel(req: BuildRequest) -> BuildResult:
    """Compile ``req.source`` into one wheel under ``req.work/raw``."""
    tree = req.work / "tree"
    raw = req.work / "raw"
    for d in (tree, raw):
        if d.exists():
            shutil.rmtree(d)
    raw.mkdir(parents=True)
    env = {
        **req.env,
        "CMAKE_ARGS": shlex.join(req.cmake_args),
        "CMAKE_BUILD_PARALLEL_LEVEL": str(req.jobs),
        "FORCE_CMAKE": "1",
    }
    _reproducible(env, req)
    tool, req.runner = _with_compile_cache(env, req.work, req.runner)
    # counted as a difference, so that builds sharing the store do not reset each other's numbers
    before = _ccache_stats(tool, env, req.runner) if tool else (0, 0)
    progress = Progress()
    seconds = _pip_wheel(req, env, tree, raw, progress)
    wheels = sorted(raw.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one wheel in {raw}, found {[w.name for w in wheels]}")
    cache = None
    if tool:
        hits, misses = _ccache_stats(tool, env, req.runner)
        cache = CacheStats(tool.name, hits - before[0], misses - before[1])
        log.info(cache.describe())
    log.info(f"compiled {progress.steps} steps in {log.human_time(seconds)}")
    return BuildResult(wheels[0], seconds, progress.steps, cache, req.jobs, req.log_file, list(req.cmake_args))
