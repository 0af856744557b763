"""The build pipeline: a `Plan` -> toolchain -> source -> compile -> repair -> verify -> manifest.

Each step takes the previous one's artifact; the result is a wheel with a JSON manifest beside it
that says exactly what is in it and how it was built. Every step's result describes itself for
the manifest (``manifest_fields()``), so the manifest module names no stage.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamawheel import __version__, repair
from llamawheel.building import cache, glibc, patches, root_runner, sdist
from llamawheel.building import timings as build_timings
from llamawheel.building.compile import BuildRequest, BuildResult, build_wheel, default_jobs
from llamawheel.building.planning import Plan, cmake_args_for, user_cmake_args
from llamawheel.core import fileio, log, paths, proc
from llamawheel.core.errors import UsageError
from llamawheel.mirror import provenance
from llamawheel.pipeline import manifest, wheelhouse
from llamawheel.recipe.model import CudaMinor
from llamawheel.toolchain import CudaRoot, buildroot, cross, provider_for
from llamawheel.verify.static import Expectations, Report, verify_wheel
from llamawheel.wheel import policy


@dataclass
class _Timings:
    """How long each step took, in the manifest's ``durations_seconds``."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = time.monotonic() - started


def tool_versions(root: CudaRoot | None, build_root: buildroot.Root | None = None) -> dict[str, str]:
    """The first line of each build tool's ``--version``, for the manifest (a build root's own gcc and Python; its
    CMake and ninja are wheels, named in ``build_env.wheelhouse``; the compile cache's tool and version are in
    ``build.compile_cache``)."""

    def first_line(cmd: list[str]) -> str:
        if build_root is not None:
            out = build_root.output(cmd)
            return out.splitlines()[0] if out else ""
        done = proc.probe(cmd, timeout=30)
        out = done.stdout if done is not None else ""
        return out.strip().splitlines()[0] if out.strip() else ""

    versions = {
        "llamawheel": __version__,
        "python": first_line(["python3", "--version"]) if build_root else platform.python_version(),
        "cmake": "" if build_root else first_line(["cmake", "--version"]),
        "gcc": first_line(["gcc", "--version"]),
        "ninja": "" if build_root else first_line(["ninja", "--version"]),
    }
    if root:
        versions["nvcc"] = root.nvcc_version
    return {k: v for k, v in versions.items() if v}


def work_dir(plan: Plan) -> Path:
    """This variant's own build folder in the cache (source tree, CMake tree, raw wheel, log)."""
    where = ("" if plan.build_env == buildroot.HOST else f"-{plan.build_env}") + \
        ("" if plan.platform.native else f"-{plan.platform.name}")
    return paths.builds_dir() / f"{plan.source.name}-{plan.local_version}{where}"


def provision_toolchain(plan: Plan, minor: CudaMinor) -> CudaRoot:
    """The CUDA root: the provider's, and for another platform, that root with the platform's runtime libraries."""
    root = provider_for(minor, plan.options.toolchain).provision(minor, plan.mirror)
    return root if plan.platform.native else cross.cross_root(root, minor, plan.platform, plan.mirror)


def prepare_source(plan: Plan, work: Path) -> tuple[Path, dict[str, Any]]:
    """A fresh source tree for this build (the pinned sdist unpacked, or a copy of ``--source``), and the
    manifest's description of it."""
    local = plan.options.source
    if local is not None:
        log.info(f"building the local source tree {local} instead of the pinned sdist"
                 + (" (the recipe's patches are for the sdist: not applied)" if plan.patch_files else ""))
        shutil.rmtree(work / "src", ignore_errors=True)
        return Path(shutil.copytree(local, work / "src", symlinks=True)), sdist.describe(plan.source, None, local)
    archive = sdist.fetch(plan.source, plan.mirror)
    tree = sdist.unpack(archive, work / "src")
    pinned = plan.recipe.llama_cpp_python.version
    if plan.patch_files and plan.source.version != pinned:
        log.warn(f"the recipe's patches are made for llama-cpp-python {pinned}: building {plan.source.version} "
                 "unpatched (streamed answers are slow on it, see recipes/patches/)")
        applied = []
    else:
        applied = patches.apply_all(plan.patch_files, tree)
    described = sdist.describe(plan.source, archive, None)
    described["source"]["patches"] = [p.describe() for p in applied]
    return tree, described


def source_date_epoch(source: Path, pinned: bool) -> int:
    """``SOURCE_DATE_EPOCH`` for a build: the user's, else the pinned sdist's own date (its PKG-INFO), else (a
    local tree, whose dates are those of a checkout) 1980-01-01."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    pkg_info = source / "PKG-INFO"
    if pinned and pkg_info.is_file():
        return max(int(pkg_info.stat().st_mtime), 315532800)
    return 315532800


def compile_source(plan: Plan, root: CudaRoot | None, source_dir: Path, work: Path,
                   build_root: buildroot.Root | None = None,
                   compile_cache: cache.CompileCache | None = None,
                   cmake_args: list[str] | None = None) -> tuple[BuildResult, dict[str, Any]]:
    """Compile on this machine or in the build root, with pip given only the wheelhouse; returns the result and
    the manifest's ``build_env`` (for a root: the root) and ``fetched.build_requirements`` (the wheels pip was
    given, with their URLs). ``cmake_args``: instead of the plan's (`cmake_args_for`)."""
    env: dict[str, str] = {}
    if root is not None:
        env.update(root.env())
    runner = root_runner.Runner()
    described: dict[str, Any] = {"build_env": {"name": buildroot.HOST}}
    if build_root is not None and plan.suite is not None:
        house, files = wheelhouse.fetch(source_dir, plan.suite, plan.mirror)
        runner = root_runner.runner_for(build_root, house, root.path if root else None, work)
        described = build_root.manifest_fields()
    else:
        house, files = wheelhouse.fetch(source_dir, wheelhouse.host_target(), plan.mirror)
        if root is not None:
            env["PATH"] = f"{root.path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        env.update({**proc.unset_all("PIP_"), **buildroot.env_for_pip(house)})
    described["fetched"] = {**described.get("fetched", {}), "build_requirements": provenance.to_json(files)}
    binding, flags = bind_glibc(plan, build_root, work, runner)
    described["glibc"] = binding.manifest_fields()["glibc"] if binding else None
    kind = "cpu" if root is None else "cuda"
    log_file = work / "build.log"
    log_file.unlink(missing_ok=True)
    opts = plan.options
    args = cmake_args_for(plan, root) if cmake_args is None else cmake_args
    request = BuildRequest(source_dir, work, args, opts.jobs or default_jobs(kind),
                           kind, env, log_file, runner, source_date_epoch(source_dir, opts.source is None),
                           root.path if root else None, compile_cache or cache.CompileCache("none"), flags)
    built = build_wheel(request)
    built.glibc = binding
    return built, described


def bind_glibc(plan: Plan, build_root: buildroot.Root | None, work: Path,
               runner: root_runner.Runner) -> tuple[glibc.Binding | None, dict[str, str]]:
    """The glibc binding of this build (None: no target, the build environment's own glibc), its header written
    into the build's folder, and the flags that give it to the compilers and the linker (none: nothing bound)."""
    target = plan.glibc
    if target is None:
        return None, {}
    if build_root is not None:
        env_glibc, top = glibc.parse_version(build_root.glibc), build_root.path
    else:
        env_glibc, top = glibc.this_machine(), Path("/")
    binding = glibc.binding(target, top / plan.platform.libdirs()[0], env_glibc)
    if not binding.needed:
        log.info(f"building for glibc {glibc.dotted(target)} in an environment with glibc {glibc.dotted(env_glibc)}: "
                 "nothing to bind")
        return binding, {}
    header = glibc.write_header(binding, work / ".glibc")
    replaced = [a.split("=")[0] for a in user_cmake_args()
                if re.match(r"-DCMAKE_(C|CXX|CUDA|SHARED_LINKER|MODULE_LINKER)_FLAGS(:\w+)?=", a)]
    if replaced:
        log.warn(f"your CMAKE_ARGS set {', '.join(replaced)}, which replaces the CFLAGS/CXXFLAGS/CUDAFLAGS/LDFLAGS the "
                 "glibc binding is given in: the libraries may then need a newer glibc and the build stop at repair. "
                 "Put your flags in those variables instead")
    log.info(f"building for glibc {glibc.dotted(target)} (the environment has {glibc.dotted(env_glibc)}): "
             f"{len(binding.bound)} glibc symbols bound to older versions if used "
             f"({', '.join(sorted(binding.bound)[:8])}{', ...' if len(binding.bound) > 8 else ''}), "
             "libstdc++ linked statically")
    return binding, binding.flags(runner.inside(str(header)))


def repair_built(plan: Plan, built: BuildResult, sysroot: Path | None = None) -> repair.RepairedWheel:
    cuda = plan.minor is not None
    spec = repair.RepairSpec(
        local_version=plan.local_version,
        runtime=plan.options.runtime if cuda else "none",
        runtime_rpath=plan.recipe.runtime_rpath if cuda else (),
        requires=plan.minor.runtime_requires if (plan.minor and plan.options.runtime == "pypi") else (),
        sysroot=sysroot,
        glibc=plan.glibc,
        binding=built.glibc,
        target=plan.platform,
    )
    return repair.repair_wheel(built.wheel, plan.output_dir, spec)


def verify_repaired(plan: Plan, wheel: Path) -> Report:
    """Static verification; a wheel that fails it is renamed ``.rejected``, never left where pip would take it."""
    expect = Expectations.for_plan(plan.minor, plan.targets, plan.options.runtime, plan.recipe,
                                   tuple(user_cmake_args()), plan.build_env, plan.glibc, plan.platform)
    report = verify_wheel(wheel, expect)
    print(report.render())
    if not report.ok:
        rejected = wheel.with_name(wheel.name + ".rejected")
        os.replace(wheel, rejected)
        log.warn(f"the wheel failed verification; kept for inspection as {rejected}")
    report.raise_if_failed()
    return report


def run(plan: Plan) -> Path:
    """Run every step; returns the repaired, verified wheel (its manifest beside it).

    One build of a variant at a time: a second one waits (both would unpack and compile in the same folder)."""
    work = work_dir(plan)

    def waiting() -> None:
        log.info(f"another build of {plan.local_version} is running on this machine (log: {work / 'build.log'}): "
                 "waiting for it to finish")

    with fileio.locked(work, on_wait=waiting):
        return _run(plan, work)


def _run(plan: Plan, work: Path) -> Path:
    timings = _Timings()
    started = time.monotonic()
    if plan.suite is not None:  # before anything is downloaded
        buildroot.check_can_build(plan.suite.name)
    if plan.glibc is not None and policy.policy_for(plan.glibc) is None:
        known = ", ".join(glibc.dotted(p.glibc) for p in policy.policies() if p.glibc >= glibc.OLDEST)
        raise UsageError(f"glibc {glibc.dotted(plan.glibc)}: auditwheel has no manylinux policy for it, so no wheel "
                         "can be tagged for it", f"choose one of {known}")
    log.info(f"building {plan.describe()} (variant {plan.local_version}, {plan.mirror.name} mirror"
             + (f", in a {plan.suite.label} root)" if plan.suite else ", on this machine)"))
    opts = plan.options  # the compile cache's store is asked first: a build that cannot use it stops at once
    compile_cache = cache.resolve(opts.compile_cache, opts.compile_cache_url, opts.farm, plan.mirror)
    root = None
    if plan.minor is not None:  # a CPU build has no toolchain step
        with timings.step("toolchain"):
            root = provision_toolchain(plan, plan.minor)
    build_root = None
    if plan.suite is not None:
        with timings.step("build_root"):
            build_root = buildroot.build_root(plan.suite.name, plan.mirror, plan.platform)
    with timings.step("source"):
        source_dir, source = prepare_source(plan, work)
    built, build_env = compile_source(plan, root, source_dir, work, build_root, compile_cache)
    timings.seconds["compile"] = built.seconds
    if plan.options.source is None and (built.cache is not None or built.compile_cache.tool == "none"):
        # a cold build of the recipe (with no compile cache, every build is): its costs are kept
        build_timings.record(plan.minor.version if plan.minor else None, plan.targets, built.jobs, built.seconds,
                             plan.build_env, built.cache)
    with timings.step("repair"):
        repaired = repair_built(plan, built, build_root.path if build_root else None)
    report = None
    if plan.options.verify:
        with timings.step("verify"):
            report = verify_repaired(plan, repaired.path)
    timings.seconds["total"] = time.monotonic() - started
    durations = {"durations_seconds": {k: round(v, 1) for k, v in timings.seconds.items()}}
    tools = {"tools": tool_versions(root, build_root)}
    manifest.write(repaired.path, manifest.compose(repaired.path, plan, root, build_env, source, built, repaired,
                                                   report or {"verify_static": None}, durations, tools))
    shutil.rmtree(work / "src", ignore_errors=True)
    log.info(
        f"done in {log.human_time(timings.seconds['total'])}: {repaired.path} "
        f"({log.human_size(repaired.path.stat().st_size)}, the plain build was "
        f"{log.human_size(built.wheel.stat().st_size)})"
    )
    return repaired.path
