"""The companion wheel: llama.cpp's own server (``llama-server``: parallel slots, continuous batching), built from
the llama.cpp that the pinned llama-cpp-python sdist vendors, in the same build root, for the same glibc and
machine, and running on that wheel's own libraries.

The sdist is unpacked and patched as for the wheel; the project in ``recipes/server/`` (a pyproject.toml and a
CMakeLists.txt) is put over its own, so scikit-build-core builds ``llama-server`` instead of the bindings. No
backend is compiled (ggml's CPU and CUDA code are the wheel's modules, loaded at run time), so one server wheel
goes with every variant of the same release: CPU, CUDA 11, 12 and 13. Repair keeps only what the server adds
(``llamawheel_server/``: the one binary, ``static-server.patch``) and points its RUNPATH at
``llama_cpp/lib``, where llama-cpp-python's wheel installs libllama, libggml and libmtmd.

A server wheel built from the same inputs (its fingerprint, in the manifest beside it) is reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from llamawheel import repair
from llamawheel.building import cache, patches, planning
from llamawheel.building.planning import Plan
from llamawheel.core import fileio, log, paths
from llamawheel.core.errors import UsageError
from llamawheel.pipeline.steps import compile_source, prepare_source
from llamawheel.toolchain import buildroot
from llamawheel.wheel.distmeta import WheelName

DISTRIBUTION = "llamawheel_server"
"""The start of the wheel's file name."""
PROJECT = "llamawheel-server"
"""Its project name (PEP 503), as indexes and requirements name it."""
PACKAGE = "llamawheel_server"
FROM_WHEEL = ("libllama", "libggml", "libggml-base", "libmtmd")
"""Libraries the server needs that llama-cpp-python's wheel holds (in ``llama_cpp/lib``), under any version suffix."""
WHEEL_LIB_DIR = "llama_cpp/lib"
MANIFEST_SUFFIX = ".json"


def project_dir() -> Path:
    return paths.recipes_dir() / "server"


def fingerprint(plan: Plan) -> str:
    """What makes the server wheel: the sdist, the patches, the server project, where and for what it is built."""
    digest = hashlib.sha256()
    source = plan.options.source
    digest.update(f"{plan.source.version}\0{plan.source.sha256}\0{source or ''}\0".encode())
    digest.update(f"{plan.build_env}\0{plan.platform.name}\0{plan.glibc}\0{planning.user_cmake_args()}\0".encode())
    files = [*plan.patch_files, *sorted(p for p in project_dir().rglob("*") if p.is_file()
                                        and "__pycache__" not in p.parts)]
    for part in files:
        digest.update(part.name.encode() + b"\0" + part.read_bytes() + b"\0")
    return digest.hexdigest()


def current(plan: Plan, made: str | None = None) -> Path | None:
    """The server wheel for this plan already in its output folder, built from the same inputs."""
    made = made or fingerprint(plan)
    for wheel in sorted(plan.output_dir.glob(f"{DISTRIBUTION}-{plan.source.version}-*.whl")):
        try:
            name = WheelName.parse(wheel.name)
            data = json.loads(wheel.with_name(wheel.name + MANIFEST_SUFFIX).read_text())
        except (OSError, ValueError):
            continue
        if name.platform.endswith(plan.platform.name) and data.get("fingerprint") == made:
            return wheel
    return None


def work_dir(plan: Plan) -> Path:
    where = ("" if plan.build_env == buildroot.HOST else f"-{plan.build_env}") + \
        ("" if plan.platform.native else f"-{plan.platform.name}")
    return paths.builds_dir() / f"llamawheel-server-{plan.source.version}{where}"


def overlay(source_dir: Path, version: str) -> None:
    """Put the server project over the unpacked sdist (its pyproject.toml and CMakeLists.txt are replaced)."""
    project = project_dir()
    text = (project / "pyproject.toml").read_text().replace("@VERSION@", version)
    (source_dir / "pyproject.toml").write_text(text)
    shutil.copyfile(project / "CMakeLists.txt", source_dir / "CMakeLists.txt")
    package = source_dir / PACKAGE
    shutil.rmtree(package, ignore_errors=True)
    shutil.copytree(project / PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    for patch in sorted(project.glob("*.patch")):
        patches.apply(patch, source_dir)


def build(plan: Plan) -> Path:
    """The server wheel for ``plan``'s llama-cpp-python release, build environment, glibc and machine: one already
    in the output folder, else built, repaired and written there with its manifest."""
    work = work_dir(plan)
    pinned = plan.recipe.llama_cpp_python.version
    if plan.source.version != pinned:
        raise UsageError(f"llama-server: the server project (recipes/server/) is made for llama-cpp-python {pinned}'s "
                         f"llama.cpp, not {plan.source.version}'s", "build with --no-server")

    def waiting() -> None:
        log.info(f"another build of llama-server is running on this machine (log: {work / 'build.log'}): waiting")

    with fileio.locked(work, on_wait=waiting):
        made = fingerprint(plan)
        found = current(plan, made)
        if found is not None:
            log.info(f"llama-server: {found.name} is up to date (built from the same sources for the same system)")
            return found
        return _build(plan, work, made)


def _build(plan: Plan, work: Path, made: str) -> Path:
    started = time.monotonic()
    where = f"in the {plan.suite.label} root" if plan.suite else "on this machine"
    log.info(f"building llama.cpp's own server (llama-server) of llama-cpp-python {plan.source.version} {where}, for "
             f"{plan.platform.label}: parallel slots for the runtime image")
    opts = plan.options
    compile_cache = cache.resolve(opts.compile_cache, opts.compile_cache_url, opts.farm, plan.mirror)
    build_root = buildroot.build_root(plan.suite.name, plan.mirror, plan.platform) if plan.suite else None
    source_dir, _ = prepare_source(plan, work)
    overlay(source_dir, plan.source.version)
    args = [*plan.platform.cmake_args(), *planning.user_cmake_args()]
    built, _ = compile_source(plan, None, source_dir, work, build_root, compile_cache, cmake_args=args)
    spec = repair.RepairSpec(local_version="", runtime="none", sysroot=build_root.path if build_root else None,
                             glibc=plan.glibc, binding=built.glibc, target=plan.platform,
                             provided=repair.Provided(WHEEL_LIB_DIR, FROM_WHEEL))
    repaired = repair.repair_wheel(built.wheel, plan.output_dir, spec)
    manifest = {"fingerprint": made, "llama_cpp_python": plan.source.version, "platform": plan.platform.name,
                "recipe": {"name": "server", "file": "server/CMakeLists.txt"}, "build_env": {"name": plan.build_env},
                "glibc": plan.glibc and ".".join(map(str, plan.glibc)),
                "platform_tag": repaired.platform_tag, "libraries": repaired.libraries,
                "compile_seconds": round(built.seconds, 1), "cmake_args": args}
    fileio.write_file(repaired.path.with_name(repaired.path.name + MANIFEST_SUFFIX),
                      (json.dumps(manifest, indent=2) + "\n").encode())
    shutil.rmtree(work / "src", ignore_errors=True)
    log.info(f"llama-server: {repaired.path} ({log.human_size(repaired.path.stat().st_size)}) in "
             f"{log.human_time(time.monotonic() - started)}")
    return repaired.path
