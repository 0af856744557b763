"""Planning a build: recipe + mirror profile + options -> a `Plan` (what to build, for which
architectures, from which source, with which host compiler), checked before anything is downloaded."""

from __future__ import annotations

import os
import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamawheel.building import glibc, timings
from llamawheel.building.compile import default_jobs
from llamawheel.building.options import BuildOptions
from llamawheel.core import log, paths
from llamawheel.core.compat import tomllib
from llamawheel.core.errors import UsageError
from llamawheel.mirror.profiles import MirrorProfile, load_profile
from llamawheel.recipe import archs, catalog, platforms
from llamawheel.recipe.model import CudaMinor, Recipe, Sdist
from llamawheel.recipe.variant import Variant, cuda_version_of, flags_label
from llamawheel.toolchain import CudaRoot, buildroot, hostcc

JETSON_ORIN = "87"
"""Jetson Orin's architecture: JetPack 6 brings its CUDA (12.x), not NVIDIA's PyPI wheels."""


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
    build_env: str = buildroot.HOST
    """Where it is compiled: ``host`` or a Debian suite whose root is made from the mirror (``bullseye``)."""

    @property
    def suite(self) -> buildroot.Suite | None:
        """The build root's Debian release; None on the host."""
        return buildroot.SUITES.get(self.build_env)

    @property
    def platform(self) -> platforms.Platform:
        """The machine the wheel runs on: ``--platform``, else the recipe's ``build.platform``."""
        return platforms.get(self.options.platform or self.recipe.build.platform)

    def check_platform(self) -> Plan:
        """Refuse, before anything is fetched, a platform this build environment cannot compile for: another
        machine's code is cross-compiled in a Debian root, whose cross compiler llamawheel installs."""
        target = self.platform
        if not target.native and self.minor is not None and target.name not in self.minor.targets:
            listed = [m.version for m in self.recipe.minors.values() if target.name in m.targets]
            raise UsageError(f"--platform {target.name}: CUDA {self.minor.version}'s recipe lists no {target.name} "
                             f"runtime wheels to link against ({self.recipe.path.name}: "
                             f"[minors.\"{self.minor.version}\".targets.{target.name}])",
                             f"build a CUDA version that lists them: {', '.join(listed)}" if listed else
                             f"add NVIDIA's {target.name} nvidia-cuda-runtime and nvidia-cublas wheels there, pinned")
        orin = [t for t in self.targets if t.sm == JETSON_ORIN]
        if orin and target.name == "aarch64" and self.minor is not None:
            if self.minor.major >= 13:
                raise UsageError(f"--arch {JETSON_ORIN} (Jetson Orin) with CUDA {self.minor.version}: Orin runs "
                                 "JetPack 6, whose driver is CUDA 12, so a CUDA 13 wheel cannot run there",
                                 "build CUDA 12 for it: nox -s build-cuda-12 -- --arch orin --platform aarch64 "
                                 "--runtime system")
            if self.options.runtime == "pypi":
                raise UsageError(f"--arch {JETSON_ORIN} (Jetson Orin): its CUDA libraries come with JetPack; NVIDIA's "
                                 "PyPI runtime wheels are built for Arm servers (SBSA) and do not run there",
                                 "add --runtime system: the wheel then uses JetPack's libcudart and libcublas")
        if not target.native and self.suite is None:
            raise UsageError(f"--platform {target.name}: a wheel for {target.label} is cross-compiled in a Debian "
                             f"build root, not on this {platforms.host().label} machine as it is (--build-env host)",
                             "drop --build-env host (the recipe's bullseye root gets the cross compiler)")
        return self

    @property
    def glibc(self) -> tuple[int, int] | None:
        """The oldest glibc the wheel is built for: ``--glibc``, else the recipe's in a root that can build for it
        (not one of glibc 2.34 or newer); None: the build environment's own (nothing bound)."""
        if self.options.glibc:
            return glibc.parse_version(self.options.glibc, "--glibc")
        if self.suite is not None and self.recipe.build.glibc and self.suite.glibc < glibc.SPLIT:
            return glibc.parse_version(self.recipe.build.glibc, f"{self.recipe.path.name}: build.glibc")
        return None

    def check_glibc(self) -> Plan:
        """Refuse, before anything is fetched, a glibc target this build environment cannot build for."""
        if self.glibc is not None:
            glibc.check_reachable(self.glibc, self.suite.glibc if self.suite else glibc.this_machine())
        return self

    @property
    def variant(self) -> Variant:
        extra = user_cmake_args()
        return Variant.for_build(
            self.minor.version if self.minor else None, self.targets, self.recipe.default_targets(),
            self.options.runtime == "system", flags_label(extra) if extra else "",
        )

    @property
    def local_version(self) -> str:
        """The variant label the wheel's version carries: ``cu130.sm86``, ``cpu``."""
        return self.variant.label

    @property
    def output_dir(self) -> Path:
        """Where the wheel and its manifest go: ``--out``, else ``wheels/`` (checked when planned)."""
        return output_folder(self.options)

    def manifest_fields(self) -> dict[str, Any]:
        minor = self.minor
        return {
            "variant": self.local_version,
            "recipe": {"name": self.recipe.name, "file": self.recipe.path.name,
                       "sha256": catalog.fingerprint(self.recipe, self.platform)},
            "platform": self.platform.name,
            "cuda": None if minor is None else {
                "version": minor.version,
                "packages": [f"{p.name}=={p.version}" for p in minor.packages],
            },
            "architectures": [t.cmake() for t in self.targets],
            "cmake_architectures": archs.cmake_value(self.targets) if self.targets else None,
            "runtime": self.options.runtime if minor else "none",
            "target_needs": self.target_needs(),
            "requires": list(minor.runtime_requires) if minor and self.options.runtime == "pypi" else [],
            "mirror": {"name": self.mirror.name, "pypi": self.mirror.pypi_index() or "pip's own default"},
        }

    def target_needs(self) -> str:
        """What a machine needs to run the wheel, besides a glibc no older than its tag's and Python."""
        minor = self.minor
        if minor is None:
            return "nothing more (CPU only)"
        if self.options.runtime == "system":
            jetson = " (Jetson Orin: JetPack 6.1 or newer, whose CUDA is 12.6)" \
                if any(t.sm == JETSON_ORIN for t in self.targets) else ""
            return (f"the NVIDIA driver and CUDA {minor.major}'s libcudart.so.{minor.major} and "
                    f"libcublas.so.{minor.major}, of CUDA {minor.version} or newer, on the loader's path{jetson}")
        return (f"an NVIDIA driver for CUDA {minor.version} or newer; cudart and cuBLAS come from NVIDIA's "
                f"{self.platform.name} wheels, which pip installs with the wheel")

    @property
    def patch_files(self) -> tuple[Path, ...]:
        """The patches applied to the sdist: the recipe's, then the platform's."""
        return catalog.patch_files(self.recipe, self.platform)

    def describe(self) -> str:
        on = "" if self.platform.native else f" on {self.platform.label}"
        if self.minor is None:
            return f"{self.source.name} {self.source.version} for the CPU{on}"
        return (
            f"{self.source.name} {self.source.version} for CUDA {self.minor.version}{on}, "
            f"{', '.join(str(t) for t in self.targets)}"
        )


def _source(recipe: Recipe, opts: BuildOptions) -> Sdist:
    if opts.source is not None:
        pyproject = opts.source / "pyproject.toml"
        if not pyproject.is_file():
            raise UsageError(f"--source {opts.source}: no pyproject.toml there")
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        return Sdist(name=str(project.get("name", opts.source.name)), version=str(project.get("version", "local")),
                     sha256="")
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
    return Sdist(name=pinned.name, version=version, sha256=sha)


def output_folder(opts: BuildOptions) -> Path:
    """``--out`` (``LLAMAWHEEL_OUT``), else ``wheels/``: the one place that says where the wheel goes."""
    return (opts.out or paths.wheels_dir()).expanduser().resolve()


def check_output_dir(folder: Path, option: str = "--out") -> Path:
    """The output folder, made if missing and proven writable now, before any download or compile (a build
    that fails only when it writes its wheel has wasted half an hour)."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder}: that is a file, not a folder", f"pass a folder for the wheels, e.g. "
                                                                          f"{option} {folder.parent / 'wheels'}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {folder}: cannot write there ({exc.strerror or exc})",
                         f"pass a folder you can write to with {option} DIR") from None
    return folder


def plan_cuda(recipe: Recipe, minor: CudaMinor, opts: BuildOptions) -> Plan:
    check_output_dir(output_folder(opts))
    mirror = load_profile(opts.mirror)
    gpus = archs.detect_native()
    targets = archs.select(opts.arch, recipe.default_archs, recipe.supported_for(minor), minor.version, gpus)
    env = build_env_for(recipe, opts)
    suite = buildroot.SUITES.get(env)
    plan = Plan(recipe, minor, targets, mirror, _source(recipe, opts), opts,
                hostcc.choose(minor, root_gcc=suite.gcc if suite else None), env).check_platform().check_glibc()
    jobs = opts.jobs or default_jobs("cuda")
    costs = timings.costs(env)
    cold = log.human_time(costs.estimate(minor.version, targets, jobs))
    if opts.arch is None and gpus:
        log.info(f"--arch not given: building for the GPU(s) on this machine: {', '.join(gpus)}")
    elif opts.arch is None:
        log.info(
            f"--arch not given and no GPU visible: building the recipe's default list, {len(targets)} "
            f"architectures ({', '.join(str(t) for t in targets)}). With {jobs} job(s) here expect roughly "
            f"{cold} for a cold build ({costs.source}); pass --arch 86 (say) to build for one GPU in a fraction "
            "of that"
        )
    if opts.arch is not None or gpus:
        log.info(f"{len(targets)} architecture(s) with {jobs} job(s): roughly {cold} if nothing is in the compile "
                 f"cache ({costs.source})")
    return plan


def plan_cpu(recipe: Recipe, opts: BuildOptions) -> Plan:
    if opts.arch:
        raise UsageError("--arch applies to CUDA builds only")
    check_output_dir(output_folder(opts))
    return Plan(recipe, None, (), load_profile(opts.mirror), _source(recipe, opts), opts,
                build_env=build_env_for(recipe, opts)).check_platform().check_glibc()


def plan_target(target: str, opts: BuildOptions) -> Plan:
    """The plan for ``cpu``, a CUDA line (``13``, ``cuda-13``), a CUDA minor (``13.0``) or an index variant's CUDA tag
    (``cu130``), with the recipe that builds it."""
    if target == "cpu":
        return plan_cpu(catalog.cpu_recipe(), opts)
    recipe, minor = catalog.find_cuda(cuda_version_of(target) or target.removeprefix("cuda-"))
    return plan_cuda(recipe, minor, opts)


def build_env_for(recipe: Recipe, opts: BuildOptions) -> str:
    """``--build-env`` (``LLAMAWHEEL_BUILD_ENV``), else the recipe's ``build.env``."""
    if opts.build_env:
        return buildroot.check_env(opts.build_env)
    return buildroot.check_env(recipe.build.env, f"{recipe.path.name}: build.env")


def cmake_args_for(plan: Plan, root: CudaRoot | None) -> list[str]:
    """The recipe's flags, the toolchain's, the architectures, then any CMAKE_ARGS the user set."""
    args = [*plan.recipe.cmake_args, *plan.platform.cmake_args()]
    if root is not None:
        args += [*root.cmake_args(), f"-DCMAKE_CUDA_ARCHITECTURES={archs.cmake_value(plan.targets)}",
                 *plan.platform.cuda_cmake_args()]
        if plan.host_compiler and plan.platform.native:
            args.append(f"-DCMAKE_CUDA_HOST_COMPILER={plan.host_compiler}")
    user_args = user_cmake_args()
    if user_args:
        log.info(f"adding CMAKE_ARGS from your environment (recorded in the manifest, labelled "
                 f"{flags_label(user_args)} in the version): {shlex.join(user_args)}")
        args += user_args
    return args


def user_cmake_args() -> list[str]:
    """Extra CMake flags from the ``CMAKE_ARGS`` environment variable (as scikit-build-core reads it)."""
    return shlex.split(os.environ.get("CMAKE_ARGS", "").strip())
