"""The build pipeline: recipe + mirror + options -> toolchain -> build -> repair -> verify.

Each stage takes the previous one's artifact; the result is a wheel with a JSON
manifest beside it that says exactly what is in it and how it was built.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from llamawheel import __version__, archs, log, manifest, paths, repair, sdist, verify_static
from llamawheel.build import BuildRequest, build_wheel, default_jobs
from llamawheel.errors import UsageError
from llamawheel.mirrors import MirrorProfile, load_profile
from llamawheel.options import BuildOptions
from llamawheel.recipes import CudaMinor, Recipe, Sdist
from llamawheel.toolchain import CudaRoot, hostcc, provider_for

# Measured on a 2-core machine (FACTS.md): the CPU part of the build, and one CUDA architecture.
CPU_PART_SECONDS_2CORES = 560.0
PER_ARCH_SECONDS_2CORES = 2380.0


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    minor: CudaMinor | None
    targets: tuple[archs.ArchTarget, ...]
    mirror: MirrorProfile
    source: Sdist
    options: BuildOptions
    host_compiler: str | None = None
    """A g++-N for nvcc when the default g++ is newer than the CUDA version accepts."""

    @property
    def local_version(self) -> str:
        if self.minor is None:
            return "cpu"
        parts = [self.minor.tag]
        label = archs.local_label(self.targets, self.recipe.default_targets())
        if label:
            parts.append(label)
        if self.options.runtime == "system":
            parts.append("sys")
        return ".".join(parts)

    def describe(self) -> str:
        if self.minor is None:
            return f"{self.source.name} {self.source.version} for the CPU"
        return (
            f"{self.source.name} {self.source.version} for CUDA {self.minor.version}, "
            f"{', '.join(str(t) for t in self.targets)}"
        )


def estimate_seconds(targets: tuple[archs.ArchTarget, ...], jobs: int) -> float:
    weight = sum(1.0 if t.sass else 0.0 for t in targets) + sum(0.5 for t in targets if t.ptx)
    return (CPU_PART_SECONDS_2CORES + PER_ARCH_SECONDS_2CORES * weight) * 2 / max(jobs, 1)


def _source(recipe: Recipe, opts: BuildOptions) -> Sdist:
    if opts.source is not None:
        pyproject = opts.source / "pyproject.toml"
        if not pyproject.is_file():
            raise UsageError(f"--source {opts.source}: no pyproject.toml there")
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        return Sdist(str(project.get("name", opts.source.name)), str(project.get("version", "local")), "")
    pinned = recipe.llama_cpp_python
    version = opts.llama_cpp_python or pinned.version
    if version == pinned.version:
        return pinned
    if not opts.sdist_sha256:
        raise UsageError(
            f"llama-cpp-python {version} is not pinned by {recipe.path.name} (it pins {pinned.version}), "
            "and every download is checked against a sha256",
            f"pass --sdist-sha256 with the sha256 of llama_cpp_python-{version}.tar.gz as your index lists it",
        )
    sha = opts.sdist_sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise UsageError(f"--sdist-sha256 {opts.sdist_sha256!r} is not a sha256 (64 hex digits)")
    return Sdist(pinned.name, version, sha)


def plan_cuda(recipe: Recipe, minor: CudaMinor, opts: BuildOptions) -> Plan:
    mirror = load_profile(opts.mirror)
    gpus = archs.detect_native()
    targets = archs.select(opts.arch, recipe.default_archs, recipe.supported_for(minor), minor.version, gpus)
    plan = Plan(recipe, minor, targets, mirror, _source(recipe, opts), opts, hostcc.choose(minor))
    if opts.arch is None:
        jobs = opts.jobs or default_jobs("cuda")
        if gpus:
            log.info(f"--arch not given: building for the GPU(s) on this machine: {', '.join(gpus)}")
        else:
            log.info(
                f"--arch not given and no GPU visible: building the recipe's default list, {len(targets)} "
                f"architectures ({', '.join(str(t) for t in targets)}). With {jobs} job(s) here expect roughly "
                f"{log.human_time(estimate_seconds(targets, jobs))} for a cold build; "
                "pass --arch 86 (say) to build for one GPU in a fraction of that"
            )
    return plan


def plan_cpu(recipe: Recipe, opts: BuildOptions) -> Plan:
    if opts.arch:
        raise UsageError("--arch applies to CUDA builds only")
    return Plan(recipe, None, (), load_profile(opts.mirror), _source(recipe, opts), opts)


def _tool_versions(root: CudaRoot | None) -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
            return out.strip().splitlines()[0] if out.strip() else ""
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {
        "llamawheel": __version__,
        "python": platform.python_version(),
        "cmake": first_line(["cmake", "--version"]),
        "gcc": first_line(["gcc", "--version"]),
        "ninja": first_line(["ninja", "--version"]),
        "ccache": first_line(["ccache", "--version"]),
    }
    if root:
        versions["nvcc"] = root.nvcc_version
    return {k: v for k, v in versions.items() if v}


def cmake_args_for(plan: Plan, root: CudaRoot | None) -> list[str]:
    """The recipe's flags, the toolchain's, the architectures, then any CMAKE_ARGS the user set."""
    args = list(plan.recipe.cmake_args)
    if root is not None:
        args += [*root.cmake_args(), f"-DCMAKE_CUDA_ARCHITECTURES={archs.cmake_value(plan.targets)}"]
        if plan.host_compiler:
            args.append(f"-DCMAKE_CUDA_HOST_COMPILER={plan.host_compiler}")
    user_args = os.environ.get("CMAKE_ARGS", "").strip()
    if user_args:
        log.info(f"adding CMAKE_ARGS from your environment (recorded in the manifest): {user_args}")
        args += shlex.split(user_args)
    return args


def run(plan: Plan) -> Path:
    """Run every stage; returns the repaired, verified wheel."""
    opts = plan.options
    started = time.monotonic()
    durations: dict[str, float] = {}
    log.info(f"building {plan.describe()} (variant {plan.local_version}, {plan.mirror.name} mirror)")

    root: CudaRoot | None = None
    if plan.minor is not None:
        t = time.monotonic()
        root = provider_for(plan.minor, opts.toolchain).provision(plan.minor, plan.mirror)
        durations["toolchain"] = time.monotonic() - t

    t = time.monotonic()
    work = paths.builds_dir() / f"{plan.source.name}-{plan.local_version}"
    archive: Path | None = None
    if opts.source is not None:
        log.info(f"building the local source tree {opts.source} instead of the pinned sdist")
        shutil.rmtree(work / "src", ignore_errors=True)
        source_dir = Path(shutil.copytree(opts.source, work / "src", symlinks=True))
    else:
        archive = sdist.fetch(plan.source, plan.mirror)
        source_dir = sdist.unpack(archive, work / "src")
    durations["source"] = time.monotonic() - t

    cmake_args = cmake_args_for(plan, root)
    env: dict[str, str] = {}
    if root is not None:
        env.update(root.env())
        env["PATH"] = f"{root.path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    env.update(plan.mirror.pip_env())
    kind = "cpu" if root is None else "cuda"
    jobs = opts.jobs or default_jobs(kind)
    log_file = work / "build.log"
    log_file.unlink(missing_ok=True)
    result = build_wheel(BuildRequest(source_dir, work, cmake_args, jobs, kind, env, log_file))
    durations["compile"] = result.seconds

    out_dir = (opts.out or paths.wheels_dir()).resolve()
    t = time.monotonic()
    repaired = repair.repair_wheel(
        result.wheel,
        out_dir,
        repair.RepairSpec(
            local_version=plan.local_version,
            runtime=opts.runtime if root is not None else "none",
            runtime_rpath=plan.recipe.runtime_rpath if root is not None else (),
            requires=plan.minor.runtime_requires if (plan.minor and opts.runtime == "pypi") else (),
        ),
    )
    durations["repair"] = time.monotonic() - t

    report = None
    if opts.verify:
        t = time.monotonic()
        expect = verify_static.Expectations.for_plan(plan.minor, plan.targets, opts.runtime, plan.recipe)
        report = verify_static.verify_wheel(repaired.path, expect)
        durations["verify"] = time.monotonic() - t
        print(report.render())
        if not report.ok:
            # never leave a wheel that failed verification where pip or publish would take it
            rejected = repaired.path.with_name(repaired.path.name + ".rejected")
            os.replace(repaired.path, rejected)
            log.warn(f"the wheel failed verification; kept for inspection as {rejected}")
        report.raise_if_failed()

    durations["total"] = time.monotonic() - started
    manifest.write(
        repaired.path,
        manifest.build_manifest(
            plan=plan,
            root=root,
            archive=archive,
            cmake_args=cmake_args,
            raw_wheel=result.wheel,
            repaired=repaired,
            build=result,
            durations=durations,
            tools=_tool_versions(root),
            report=report,
        ),
    )
    shutil.rmtree(work / "src", ignore_errors=True)
    log.info(
        f"done in {log.human_time(durations['total'])}: {repaired.path} "
        f"({log.human_size(repaired.path.stat().st_size)}, the plain build was "
        f"{log.human_size(result.wheel.stat().st_size)})"
    )
    return repaired.path
