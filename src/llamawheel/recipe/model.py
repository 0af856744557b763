"""What a recipe file holds, as frozen dataclasses: the only statement of its keys, types and meaning.

`llamawheel.core.records` reads a TOML file into these classes (an unknown key, a wrong type or a
missing value is an error naming the file, the dotted key and the closest spelling) and writes the
JSON schema editors use (``recipes/recipe.schema.json``) from the same fields and their docstrings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llamawheel.core.datafile import Table
from llamawheel.core.errors import UsageError, did_you_mean
from llamawheel.core.records import DERIVED
from llamawheel.recipe import archs, platforms, variant

_SHA256 = re.compile(r"[0-9a-f]{64}")
PROVIDERS = ("pypi", "deb", "system")
DEFAULT_PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")


def _sha256(value: str | tuple[str, ...]) -> str | None:
    for h in (value,) if isinstance(value, str) else value:
        if not _SHA256.fullmatch(h):
            return f"'{h}' is not a lowercase hex sha256"
    return None if value else "is empty: every pinned file needs its sha256"


def _pythons(values: tuple[str, ...]) -> str | None:
    bad = [v for v in values if not re.fullmatch(r"3\.\d+", v)]
    return f"'{bad[0]}' is not a Python version like 3.12" if bad else None


def _glibc(value: str) -> str | None:
    match = re.fullmatch(r"(\d+)\.(\d+)", value)
    if not match:
        return f"'{value}' is not a glibc version like 2.28"
    return None if (int(match[1]), int(match[2])) >= (2, 17) else \
        f"'{value}' is older than 2.17 (manylinux2014), the oldest glibc CUDA's libraries support"


def _platform(value: str) -> str | None:
    if value in platforms.PLATFORMS:
        return None
    return f"'{value}' is not a platform llamawheel builds for{did_you_mean(value, platforms.PLATFORMS)} (choose " \
           f"{', '.join(platforms.PLATFORMS)})"


def requirement_name(line: str) -> str:
    """``nvidia-cublas-cu12>=12.4,<13`` -> ``nvidia-cublas-cu12``."""
    return re.split(r"[<>=!~;\s\[]", line, maxsplit=1)[0]


@dataclass(frozen=True)
class PinnedPackage:
    """One package at an exact version, with the sha256 of each file pip may take."""

    name: str
    """The project name on PyPI (``nvidia-cuda-nvcc``)."""
    version: str
    """The exact version."""
    sha256: tuple[str, ...] = field(metadata={"check": _sha256, "one_or_many": True})
    """The sha256 of the file pip may take (a list when several files, e.g. per platform, may be taken)."""

    def requirement_line(self) -> str:
        hashes = " ".join(f"--hash=sha256:{h}" for h in self.sha256)
        return f"{self.name}=={self.version} {hashes}"


@dataclass(frozen=True)
class DebPackage:
    """A Debian package: an exact version, or a glob (``12.6.*``) resolved against the signed index."""

    name: str
    """The package name (``nvidia-cuda-toolkit``, ``cuda-nvcc-12-6``)."""
    version: str
    """An exact version, or a glob such as ``12.6.*`` for a package whose name carries the minor."""

    @property
    def is_glob(self) -> bool:
        return "*" in self.version


@dataclass(frozen=True)
class AptSource:
    """Where the ``deb`` provider fetches from; the URL itself comes from the mirror profile."""

    upstream: Literal["debian", "ubuntu", "cuda-apt"]
    """Which mirror-profile entry gives the URL: ``debian``, ``ubuntu`` or ``cuda-apt``."""
    suite: str
    """``trixie`` for an archive, ``/`` for a flat repository such as NVIDIA's."""
    keyring: str
    """A keyring file on this machine (absolute), or a key file below the repository URL."""
    components: tuple[str, ...] = ()
    """Archive components (``main``, ``non-free``); none for a flat repository."""
    path: str = ""
    """Below the mirror URL (``debian12/x86_64/`` in NVIDIA's repository), usually empty."""
    key_fingerprint: str = ""
    """For a key fetched from the repository: the 40-digit fingerprint it must have."""
    layout: Literal["debian", "nvidia"] = "debian"
    """How the packages lay files out: ``debian`` (/usr/lib/nvidia-cuda-toolkit) or ``nvidia`` (/usr/local/cuda-X.Y)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_fingerprint", self.key_fingerprint.replace(" ", "").upper())

    def validate(self, table: Table) -> None:
        if not self.keyring.startswith("/") and not re.fullmatch(r"[0-9A-F]{40}", self.key_fingerprint):
            raise table.fail("key-fingerprint", "a key fetched from the repository needs its 40-digit fingerprint "
                                                "pinned")


@dataclass(frozen=True)
class TargetLibraries:
    """NVIDIA's runtime wheels of another platform (``[minors."13.0".targets.aarch64]``): a wheel for that platform
    links against their libraries (the CUDA root's ``targets/`` folder for it), and the private index carries them
    for that platform."""

    packages: tuple[PinnedPackage, ...]
    """The runtime wheels (``nvidia-cuda-runtime``, ``nvidia-cublas``) for that platform, each pinned by sha256."""
    platform: str = field(default="", metadata={"derived": "key"})


@dataclass(frozen=True)
class CudaMinor:
    """One CUDA minor version (``[minors."13.0"]``) and how to provision its toolchain."""

    provider: Literal["pypi", "deb", "system"]
    """Where the compiler comes from: ``pypi`` (NVIDIA's wheels), ``deb`` (apt packages) or ``system``."""
    version: str = field(default="", metadata={"derived": "key"})
    packages: tuple[PinnedPackage, ...] = ()
    """For ``pypi``: the NVIDIA wheels that make the CUDA root, each pinned by sha256."""
    root: str = ""
    """Where the CUDA root lies inside the installed wheels (``nvidia/cu13``), for ``pypi``."""
    runtime_requires: tuple[str, ...] = ()
    """Requires-Dist lines of a wheel in the default ("pypi") runtime mode; default: the line's ``[cuda]``."""
    runtime_pins: tuple[str, ...] = ()
    """Which releases of the runtime wheels the private index (and so the image) carries: the ones of this
    minor, that the wheel was built against (``nvidia-cublas-cu12==12.4.*``), not the newest the loose
    Requires-Dist allows. Default: the toolchain's own ``==`` pins of those packages."""
    apt: AptSource | None = None
    """For ``deb``: the repository the packages come from."""
    deb_packages: tuple[DebPackage, ...] = ()
    """For ``deb``: the packages that make the CUDA root."""
    max_gcc: int = 99
    """The newest GCC major this CUDA version's nvcc accepts as host compiler."""
    supported_archs: tuple[str, ...] = ()
    """Overrides the line's list where a minor compiles for more (12.8 adds Blackwell)."""
    targets: dict[str, TargetLibraries] = field(default_factory=dict)
    """By platform (``aarch64``): the runtime wheels a wheel for that platform is built against; a platform not
    listed (other than x86-64, the toolchain's own) cannot be built for with this minor."""

    def __post_init__(self) -> None:
        if not self.runtime_pins:  # the toolchain's own pins of the runtime packages
            names = [requirement_name(r) for r in self.runtime_requires]
            pins = tuple(f"{p.name}=={p.version}" for p in self.packages if p.name in names)
            object.__setattr__(self, "runtime_pins", pins)

    def validate(self, table: Table) -> None:
        if not re.fullmatch(r"\d+\.\d+", self.version):
            raise table.fail("", f"'{self.version}' is not a CUDA minor version like 13.0")
        if self.provider == "pypi" and not self.packages:
            raise table.fail("packages", "provider 'pypi' needs pinned packages")
        if self.provider == "deb" and (self.apt is None or not self.deb_packages):
            raise table.fail("apt" if self.apt is None else "deb-packages",
                             "provider 'deb' needs an [apt] table and deb-packages")
        names = [requirement_name(r) for r in self.runtime_requires]
        for name, libraries in self.targets.items():
            if name not in platforms.PLATFORMS or name == platforms.X86_64.name:
                others = [p for p in platforms.PLATFORMS if p != platforms.X86_64.name]
                raise table.fail(f"targets.{name}", f"'{name}' is not a platform to cross-compile for"
                                                    f"{did_you_mean(name, others)} (choose {', '.join(others)})")
            for package in libraries.packages:
                if package.name not in names:
                    raise table.fail(f"targets.{name}.packages", f"'{package.name}' is not one of runtime-requires"
                                                                 f" ({', '.join(names)})")
        for pin in table.data.get("runtime-pins", ()):
            name = requirement_name(pin)
            if name not in names:
                raise table.fail("runtime-pins", f"'{name}' is not one of runtime-requires"
                                                 f" ({', '.join(names)}){did_you_mean(name, names)}")

    def pins_for(self, target: str) -> tuple[str, ...]:
        """The runtime wheels' releases the index carries for a wheel of platform ``target``: that platform's own
        (`targets`), else `runtime_pins`."""
        libraries = self.targets.get(target)
        return tuple(f"{p.name}=={p.version}" for p in libraries.packages) if libraries else self.runtime_pins

    @property
    def tag(self) -> str:
        """``13.0`` -> ``cu130``."""
        return variant.cuda_tag(self.version)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


@dataclass(frozen=True)
class Sdist:
    """The llama-cpp-python release every wheel is built from, pinned by sha256 (``[llama-cpp-python]``)."""

    version: str
    """The release (``0.3.36``)."""
    sha256: str = field(metadata={"check": _sha256})
    """The sha256 of its sdist, as the index lists it."""
    name: str = field(default="llama-cpp-python", metadata=DERIVED)


@dataclass(frozen=True)
class BuildFlags:
    """How the sources are configured (``[build]``)."""

    cmake_args: tuple[str, ...] = ()
    """CMake flags every build of this recipe gets (``defaults.toml`` gives the common ones)."""
    extra_cmake_args: tuple[str, ...] = ()
    """Flags added after ``cmake-args`` (a CUDA recipe's ``-DGGML_CUDA=ON``)."""
    patches: tuple[str, ...] = ()
    """Unified diffs applied to the unpacked sdist before building, relative to the recipes folder
    (``patches/stream-incremental.patch``); the wheel's manifest lists each with its sha256."""
    env: Literal["bullseye", "bookworm", "trixie", "host"] = "host"
    """Where the wheel is compiled: an older Debian root made from the apt mirror (``bullseye``: glibc 2.31
    and GCC 10; with ``glibc`` below, the wheel installs on RHEL 8, Debian 11, Ubuntu 20.04 and newer), or
    ``host``, this machine as it is. ``--build-env`` overrides it."""
    platform: str = field(default="x86_64", metadata={"check": _platform})
    """The machine the wheels run on: ``x86_64``, or ``aarch64`` (Arm servers and Jetson: cross-compiled in the
    build root, see `llamawheel.recipe.platforms`). ``--platform`` overrides it."""
    glibc: str | None = field(default=None, metadata={"check": _glibc})
    """The oldest glibc the wheels run on (``2.28``: RHEL 8 and the systems built on it), when that is older than
    the build root's own: symbols are bound to versions that glibc has, libstdc++ is linked statically, the wheel
    is tagged ``manylinux_2_28`` and a library needing anything newer fails the build with its name. Applies to
    builds in a root older than glibc 2.34 (``bullseye``); a ``host``, ``bookworm`` or ``trixie`` build targets its
    own glibc unless ``--glibc`` names one."""


@dataclass(frozen=True)
class CudaLine:
    """What the minors of a CUDA line share (``[cuda]``)."""

    default_archs: tuple[str, ...] = ()
    """Architectures built when none are named: ``86`` = machine code for sm_86; ``120+ptx`` adds PTX."""
    supported_archs: tuple[str, ...] = ()
    """Architectures this line's nvcc can compile for."""
    runtime_rpath: tuple[str, ...] = ()
    """Where NVIDIA's runtime wheels put their libraries, relative to site-packages."""
    runtime_requires: tuple[str, ...] = ()
    """Requires-Dist lines of a wheel in the default runtime mode (a minor may set its own)."""


@dataclass(frozen=True)
class Recipe:
    """A recipe: everything needed to build one CUDA line's wheels, or the CPU wheel."""

    kind: Literal["cuda", "cpu"]
    """``cuda`` or ``cpu``."""
    llama_cpp_python: Sdist
    """The pinned llama-cpp-python release (usually from ``defaults.toml``)."""
    description: str = ""
    """One line for ``llamawheel recipes``."""
    default_minor: str | None = None
    """The minor a bare line (``build-cuda-12``) builds."""
    python_versions: tuple[str, ...] = field(default=DEFAULT_PYTHONS, metadata={"check": _pythons})
    """Python versions the published index serves (its dependency closure is fetched for each)."""
    build: BuildFlags = BuildFlags()
    """CMake flags."""
    cuda: CudaLine = CudaLine()
    """What the line's minors share."""
    minors: dict[str, CudaMinor] = field(default_factory=dict)
    """The CUDA minors this line builds, by version."""
    name: str = field(default="", metadata=DERIVED)
    path: Path = field(default=Path(), metadata=DERIVED)

    def validate(self, table: Table) -> None:
        if self.kind == "cuda":
            for key in ("cuda", "minors"):
                if key not in table.data:
                    raise table.fail(key, "is missing")
            if self.default_minor is None:
                raise table.fail("default-minor", "is missing")
            if self.default_minor not in self.minors:
                raise table.fail("default-minor", f"'{self.default_minor}' is not one of the listed minors"
                                                  f"{did_you_mean(self.default_minor, self.minors)}")
        for arch in self.cuda.default_archs:
            try:
                target = archs.parse_token(arch)
            except UsageError as exc:
                raise table.fail("cuda.default-archs", exc.message) from None
            if target.sm not in self.cuda.supported_archs:
                raise table.fail("cuda.default-archs", f"'{arch}' is not in supported-archs")
        for patch in self.patch_files:
            if not patch.is_file():
                raise table.fail("build.patches", f"there is no file {patch}")

    @property
    def patch_files(self) -> tuple[Path, ...]:
        """The recipe's patches, in the order they are applied."""
        return tuple(self.path.parent / p for p in self.build.patches)

    @property
    def cmake_args(self) -> tuple[str, ...]:
        return self.build.cmake_args + self.build.extra_cmake_args

    @property
    def default_archs(self) -> tuple[str, ...]:
        return self.cuda.default_archs

    @property
    def supported_archs(self) -> tuple[str, ...]:
        return self.cuda.supported_archs

    @property
    def runtime_rpath(self) -> tuple[str, ...]:
        return self.cuda.runtime_rpath

    def default_targets(self) -> tuple[archs.ArchTarget, ...]:
        return archs.merge([archs.parse_token(a) for a in self.default_archs])

    def supported_for(self, minor: CudaMinor) -> tuple[str, ...]:
        return minor.supported_archs or self.supported_archs

    def minor(self, version: str | None) -> CudaMinor:
        """The minor for ``version`` (``None``: the line's default)."""
        if self.kind != "cuda":
            raise UsageError(f"recipe {self.name} builds for the CPU: it has no CUDA versions")
        key = version or self.default_minor
        assert key is not None
        if key not in self.minors:
            known = ", ".join(self.minors)
            raise UsageError(
                f"unknown CUDA version {key} for recipe {self.name}{did_you_mean(key, self.minors)}",
                f"known versions: {known}",
            )
        return self.minors[key]


@dataclass(frozen=True)
class RecipeDefaults:
    """``recipes/defaults.toml``: what every recipe shares; a recipe's own keys replace these."""

    llama_cpp_python: Sdist | None = None
    """The pinned llama-cpp-python release."""
    python_versions: tuple[str, ...] = field(default=DEFAULT_PYTHONS, metadata={"check": _pythons})
    """Python versions the published indexes serve."""
    build: BuildFlags = BuildFlags()
    """The CMake flags every build gets."""
