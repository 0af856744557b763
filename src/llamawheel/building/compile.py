"""Compiling a wheel: scikit-build-core through ``pip wheel``, with CMake/ninja, a
compile cache (`llamawheel.building.cache`: sccache or ccache) for C, C++ and CUDA, parallelism
bounded by memory as well as cores, and the ninja step count shown as it goes."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamawheel.building import cache_stats, cache_stores, cache_tools
from llamawheel.building.cache import CompileCache
from llamawheel.building.glibc import Binding
from llamawheel.building.root_runner import BUILD_DIR, CUDA_DIR, Runner
from llamawheel.core import fileio, log, paths, proc
from llamawheel.core.errors import BuildError

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
    compile_cache: CompileCache = field(default_factory=lambda: CompileCache("none"))
    flags: dict[str, str] = field(default_factory=dict)
    """Compiler and linker flags added to ``CFLAGS``, ``CXXFLAGS``, ``CUDAFLAGS`` and ``LDFLAGS`` (the glibc
    binding, `llamawheel.building.glibc`), after the user's own on this machine."""


@dataclass
class BuildResult:
    wheel: Path
    seconds: float
    steps: int
    cache: cache_stats.Stats | None
    jobs: int
    log_file: Path | None
    cmake_args: list[str] = field(default_factory=list)
    compile_cache: CompileCache = field(default_factory=lambda: CompileCache("none"))
    glibc: Binding | None = None
    """What was bound for an older glibc (None: built for the environment's own)."""

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "cmake_args": self.cmake_args,
            "build": {
                "jobs": self.jobs,
                "steps": self.steps,
                "compile_cache": self.compile_cache.manifest_fields(self.cache),
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


class _CacheRun:
    """One build's use of the compile cache: CMake's launchers, the tool's settings (in a private folder of the
    build's own, removed when it ends: it may hold credentials), the wrapper that starts and stops sccache's server
    around the build, and the counts."""

    def __init__(self, cc: CompileCache, env: dict[str, str], req: BuildRequest) -> None:
        self.cc = cc
        self.req = req
        self.dir = req.work / ".compile-cache"
        self.before: dict[str, int] = {}
        self.runner = req.runner
        self.env = env
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(mode=0o700, parents=True)
        binary = cc.binary
        if binary is None or cc.store is None:
            log.info("compile cache: none (--compile-cache none): every compile runs cold")
            return
        cc.store.mkdir(parents=True, exist_ok=True)
        store = cc.store.resolve()  # a store (or a folder above it) may be a link to a store shared by caches
        runner = req.runner
        if runner.root is not None and not store.is_relative_to(paths.cache_dir().resolve()):
            runner = dataclasses.replace(runner, binds=(*runner.binds, store))  # bound where the link points
        if cc.needs_network and req.runner.root is not None:
            runner = dataclasses.replace(runner, network=True)
            log.info(f"the {req.runner.root.suite} root shares this machine's network for the compile cache "
                     "(pip in it still reads only the wheelhouse)")
        self.runner = req.runner = runner
        env["CMAKE_ARGS"] += " " + shlex.join(
            [f"-DCMAKE_{lang}_COMPILER_LAUNCHER={binary}" for lang in ("C", "CXX", "CUDA")] + ["-DGGML_CCACHE=OFF"])
        if runner.root is None:  # the user's own settings for either tool would change what is shared
            env.update({**proc.unset_all("SCCACHE_"), **proc.unset_all("CCACHE_"),
                        **{name: proc.UNSET for name in cache_stores.secret_names()}})
        base = str(req.work)
        if cc.tool == "ccache":
            lines = {"cache_dir": str(store), "max_size": os.environ.get("CCACHE_MAXSIZE", "20G"),
                     "sloppiness": "time_macros,include_file_mtime,include_file_ctime", "hash_dir": "false",
                     # not the compilers' times: a toolchain unpacked on another machine or day has other times
                     "compiler_check": "content"}
            if runner.root is None:  # in a root the paths are the same everywhere (/build): nothing to rewrite,
                lines["base_dir"] = base  # and a rewrite to relative paths would change __FILE__ in the library
            if cc.remote is not None:
                lines["remote_storage"] = cc.remote.ccache_url(os.environ)
            fileio.write_private(self.dir / "ccache.conf", "".join(f"{k} = {v}\n" for k, v in lines.items()))
            env["CCACHE_CONFIGPATH"] = str(self.dir / "ccache.conf")
            self.before = self._ccache_counts()
        else:
            self._sccache_files(store, base)
        where = f" + {cc.remote.backend} store {cc.remote.url}" if cc.remote else ""
        farm = f", compiles sent to the farm at {cc.farm.scheduler}" if cc.farm else ""
        log.info(f"compile cache: {cache_tools.PINS[cc.tool].label}, local store {store}{where}{farm}")

    def _sccache_files(self, store: Path, base: str) -> None:
        cc, runner = self.cc, self.runner
        inside = runner.inside
        socket = "/tmp/llamawheel-sccache.sock" if runner.root is not None else \
            f"/tmp/llamawheel-sccache-{os.getpid()}-{id(self):x}.sock"  # a socket path must stay short
        settings = {"SCCACHE_DIR": str(store), "SCCACHE_CACHE_SIZE": os.environ.get("SCCACHE_CACHE_SIZE", "20G"),
                    "SCCACHE_IDLE_TIMEOUT": "3600", "SCCACHE_ERROR_LOG": inside(str(self.dir / "server.log")),
                    "SCCACHE_BASEDIRS": inside(base)}
        if cc.remote is not None:
            settings["SCCACHE_MULTILEVEL_CHAIN"] = f"disk,{cc.remote.backend}"
            settings.update(cc.remote.settings("sccache", os.environ))
        conf = self.dir / "sccache.toml"  # a first start (a new store, a slow remote) may take over 10 s
        fileio.write_private(conf, "server_startup_timeout_ms = 60000\n\n"
                            + (cache_stores.farm_config(cc.farm, store / "dist-client") if cc.farm else ""))
        settings["SCCACHE_CONF"] = inside(str(conf))
        fileio.write_private(self.dir / "settings.env", cache_stores.settings_text(settings))
        tool = str(self.cc.binary)
        q = shlex.quote
        self.env["SCCACHE_SERVER_UDS"] = socket
        self.env["SCCACHE_BASEDIRS"] = inside(base)
        stats = inside(str(self.dir / "stats.json"))
        script = (
            "# written by llamawheel for one build: sccache's server starts with the settings (read from a file,\n"
            "# so that no credential is an argument), the build runs, the counts are saved, the server stops.\n"
            f"set -a; . {q(inside(str(self.dir / 'settings.env')))}; set +a\n"
            f"if ! {q(tool)} --start-server >{q(settings['SCCACHE_ERROR_LOG'])} 2>&1; then\n"
            "  echo 'llamawheel: sccache could not start its server:' >&2\n"
            f"  cat {q(settings['SCCACHE_ERROR_LOG'])} >&2\n"
            "  exit 90\nfi\n"
            f"unset {' '.join(cache_stores.secret_names())}\n"
            '"$@"; rc=$?\n'
            f"{q(tool)} --show-stats --stats-format=json > {q(stats)} 2>/dev/null\n"
            f"{q(tool)} --stop-server >/dev/null 2>&1\n"
            "exit $rc\n")
        fileio.write_private(self.dir / "run.sh", script)

    def wrap(self, argv: list[str]) -> list[str]:
        """The build's command, run through the wrapper when sccache is used."""
        if self.cc.tool != "sccache" or self.cc.binary is None:
            return argv
        return ["/bin/sh", self.req.runner.inside(str(self.dir / "run.sh")), *argv]

    def _ccache_counts(self) -> dict[str, int]:
        cmd, extra = self.runner.command([str(self.cc.binary), "--print-stats"], self.env)
        return cache_stats.ccache_stats(cache_stats.run_quiet(cmd, extra))

    def finish(self) -> cache_stats.Stats | None:
        if self.cc.binary is None:
            return None
        if self.cc.tool == "ccache":
            return cache_stats.ccache_delta(self.before, self._ccache_counts())
        try:
            return cache_stats.sccache_stats(json.loads((self.dir / "stats.json").read_text()))
        except (OSError, ValueError):
            log.warn("sccache left no counts for this build")
            return None

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _add_flags(env: dict[str, str], req: BuildRequest, flags: dict[str, str]) -> None:
    """Append ``flags`` to the environment's compiler and linker flags (on this machine, after the user's own; a
    root sees none of this machine's)."""
    for var, value in flags.items():
        if value:
            before = env.get(var, os.environ.get(var, "") if req.runner.root is None else "")
            env[var] = " ".join(v for v in (before, value) if v)


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
    _add_flags(env, req, {"CFLAGS": " ".join(maps), "CXXFLAGS": " ".join(maps),
                          "CUDAFLAGS": " ".join(f"-Xcompiler={m}" for m in maps)})


def _pip_wheel(req: BuildRequest, env: dict[str, str], tree: Path, raw: Path, progress: Progress,
               run: _CacheRun) -> float:
    """Run scikit-build-core through ``pip wheel``, showing ninja's progress; returns the seconds it took."""
    python = req.runner.python or sys.executable
    start = time.monotonic()
    tip = f"the full log is {req.log_file}"

    def step(cmd: list[str], extra: dict[str, str] | None, on_line: Progress | None = None,
             keep: int = proc.KEEP) -> None:
        done = proc.stream(cmd, error=BuildError, what="the build could not start", tip=tip, check=False, env=extra,
                           log_file=req.log_file, on_line=on_line, keep=keep)
        if not done.ok:
            raise BuildError(f"the build failed after {log.human_time(time.monotonic() - start)}\n{done.describe()}",
                             tip)

    if req.runner.root is not None:  # Debian 11's pip 20.3 knows no -C: the wheelhouse has a newer one
        step(*req.runner.command([python, "-m", "pip", "install", "--upgrade", "--quiet", "pip"], env))
        network = "sharing this machine's network" if req.runner.network else "network cut"
        where = f"in the {req.runner.root.suite} root ({req.runner.root.path}), {network}"
    else:
        where = "on this machine"
    cmd, extra = req.runner.command(run.wrap([
        python, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(raw),
        "-C", f"build-dir={tree}", "-C", "cmake.build-type=Release", str(req.source),
    ]), env)
    log.info(f"building {where} with {req.jobs} parallel job(s); full log: {req.log_file}")
    step(cmd, extra, on_line=progress, keep=60)
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
    _add_flags(env, req, req.flags)
    _reproducible(env, req)
    run = _CacheRun(req.compile_cache, env, req)
    progress = Progress()
    try:
        seconds = _pip_wheel(req, env, tree, raw, progress, run)
        stats = run.finish()
    finally:
        run.close()
    wheels = sorted(raw.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one wheel in {raw}, found {[w.name for w in wheels]}")
    if stats is not None:
        log.info(stats.describe())
    log.info(f"compiled {progress.steps} steps in {log.human_time(seconds)}")
    return BuildResult(wheels[0], seconds, progress.steps, stats, req.jobs, req.log_file, list(req.cmake_args),
                       req.compile_cache)
