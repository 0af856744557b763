"""Target platforms: what it means to build a wheel for ``x86_64`` or ``aarch64``, said once.

Every stage asks its platform instead of naming one: the build root's cross compiler and where the target's
libraries lie in it (`Platform.cross_packages`, `Platform.libdirs`), the CMake settings of a cross build
(`Platform.cmake_args`), the folder of NVIDIA's CUDA root its libraries sit in (`Platform.cuda_target`), the
platform tag's machine (`Platform.name`), the ELF machine every library must have (`Platform.elf_machine`), ggml's
CPU variants (`Platform.cpu_variants`) and the program that runs its code on this machine (`Platform.qemu`).

A wheel for another machine than this one is cross-compiled in the Debian build root (bullseye has GCC 10 for
aarch64, with glibc 2.31's headers and libraries for it), so the same glibc binding and the same tag rules apply.
"""

from __future__ import annotations

import platform as _host
from dataclasses import dataclass, field

from llamawheel.core.errors import UsageError, did_you_mean


@dataclass(frozen=True)
class Platform:
    name: str
    """The machine as wheel tags and ``uname -m`` name it: ``x86_64``, ``aarch64``."""
    label: str
    """For people: ``x86-64``, ``Arm 64-bit (aarch64)``."""
    debian_arch: str
    """Debian's name: ``amd64``, ``arm64``."""
    triplet: str
    """The GNU triplet: ``aarch64-linux-gnu`` (the cross compiler's prefix, the multiarch folder)."""
    elf_machine: str
    """The ELF header's machine, as pyelftools names it: ``EM_X86_64``, ``EM_AARCH64``."""
    cuda_target: str
    """The folder under a CUDA root's ``targets/`` with this platform's headers and libraries: ``x86_64-linux``,
    ``sbsa-linux`` (Arm servers: GH200, GB200, DGX Spark, and Thor from CUDA 13 on)."""
    loader: str
    """The dynamic loader every program of this platform names."""
    cpu_variants: tuple[str, ...]
    """The CPU variants ggml builds with ``GGML_CPU_ALL_VARIANTS=ON`` (ggml/src/CMakeLists.txt), oldest first: each a
    module ``libggml-cpu-<name>.so`` that ggml scores against the CPU."""
    cpu_variant_min_gcc: dict[str, int] = field(default_factory=dict)
    """Variants an older GCC cannot compile; the recipe's patches skip them there (said in the build log)."""
    qemu: str = ""
    """The QEMU user-mode program that runs this platform's code on another machine."""
    qemu_cpus: tuple[str, ...] = ()
    """QEMU CPU models to run its code as, oldest first."""
    patches: tuple[str, ...] = ()
    """Source patches its builds add to the recipe's, relative to the recipes folder (after the recipe's own)."""

    @property
    def cross_packages(self) -> tuple[str, ...]:
        """What a Debian build root on this machine needs to compile for this platform: nothing when it is this
        machine's own, else the cross compiler and the target's C library."""
        if self.native:
            return ()
        return (f"g++-{self.triplet}", f"libc6-dev-{self.debian_arch}-cross")

    @property
    def native(self) -> bool:
        """Whether this machine runs its code itself."""
        return self.name == host().name

    @property
    def compiler_prefix(self) -> str:
        """``aarch64-linux-gnu-`` for a cross build, '' for the machine's own compilers."""
        return "" if self.native else f"{self.triplet}-"

    def libdirs(self) -> tuple[str, ...]:
        """Where a Debian root on this machine (relative to its top) keeps this platform's system libraries: the
        multiarch folders for its own, the cross folder for another (``usr/aarch64-linux-gnu/lib``)."""
        if self.native:
            return (f"lib/{self.triplet}", f"usr/lib/{self.triplet}", "lib64", "usr/lib64", "usr/lib")
        return (f"usr/{self.triplet}/lib",)

    def cmake_args(self) -> tuple[str, ...]:
        """CMake's cross-compiling settings (none for this machine's own platform): the target system, its
        compilers, and libraries and headers looked up in the target's folder only (programs in the root's)."""
        if self.native:
            return ()
        prefix = self.compiler_prefix
        return (
            "-DCMAKE_SYSTEM_NAME=Linux",
            f"-DCMAKE_SYSTEM_PROCESSOR={self.name}",
            f"-DCMAKE_C_COMPILER={prefix}gcc",
            f"-DCMAKE_CXX_COMPILER={prefix}g++",
            f"-DCMAKE_FIND_ROOT_PATH=/usr/{self.triplet}",
            "-DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER",
            "-DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY",
            "-DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY",
            "-DCMAKE_FIND_ROOT_PATH_MODE_PACKAGE=ONLY",
        )

    def cuda_cmake_args(self) -> tuple[str, ...]:
        """What a CUDA build for this platform adds on another machine: its cross g++ as nvcc's host compiler, and
        nvcc's default include and library folders (``targets/<cuda_target>``) the target's."""
        if self.native:
            return ()
        return (f"-DCMAKE_CUDA_HOST_COMPILER={self.compiler_prefix}g++",
                f"-DCMAKE_CUDA_FLAGS_INIT=--target-directory={self.cuda_target}")

    def cpu_variants_for_gcc(self, gcc: int | None) -> tuple[str, ...]:
        """The CPU variants GCC ``gcc`` builds (None: a current compiler, all of them)."""
        return tuple(v for v in self.cpu_variants if gcc is None or gcc >= self.cpu_variant_min_gcc.get(v, 0))


X86_64 = Platform(
    "x86_64", "x86-64", "amd64", "x86_64-linux-gnu", "EM_X86_64", "x86_64-linux", "ld-linux-x86-64.so.2",
    ("x64", "sse42", "sandybridge", "ivybridge", "piledriver", "haswell", "skylakex", "cannonlake", "cascadelake",
     "icelake", "cooperlake", "zen4", "alderlake", "sapphirerapids"),
    # -mavxvnni and AMX came in GCC 11: recipes/patches/cpu-variants-compiler.patch skips them before
    {"alderlake": 11, "sapphirerapids": 11},
    qemu="qemu-x86_64",
)
AARCH64 = Platform(
    "aarch64", "Arm 64-bit (aarch64)", "arm64", "aarch64-linux-gnu", "EM_AARCH64", "sbsa-linux",
    "ld-linux-aarch64.so.1",
    ("armv8.0_1", "armv8.2_1", "armv8.2_2", "armv8.2_3", "armv8.6_1", "armv8.6_2", "armv9.2_1", "armv9.2_2"),
    # -march=armv9.2-a and SME came in GCC 12 and 14: patches/arm-cpu-variants.patch skips them before
    {"armv9.2_1": 14, "armv9.2_2": 14},
    qemu="qemu-aarch64",
    qemu_cpus=("cortex-a57", "neoverse-n1", "max"),
    patches=("patches/arm-cpu-variants.patch",),
)
PLATFORMS = {p.name: p for p in (X86_64, AARCH64)}
ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}


def host() -> Platform:
    """This machine's platform (x86-64 where it is none llamawheel knows: it builds on x86-64 only)."""
    machine = _host.machine()
    return PLATFORMS.get(ALIASES.get(machine, machine), X86_64)


def get(name: str, option: str = "--platform") -> Platform:
    """The platform ``name`` (``aarch64``; Debian's ``arm64`` too), or a clear error listing the known ones."""
    found = PLATFORMS.get(ALIASES.get(name, name))
    if found is None:
        raise UsageError(f"{option} {name}: not a platform llamawheel builds for{did_you_mean(name, PLATFORMS)}",
                         f"choose one of {', '.join(PLATFORMS)}")
    return found


def of_tag(platform_tag: str) -> Platform | None:
    """The platform a wheel's tag names (``manylinux_2_28_aarch64`` -> aarch64); None for ``any`` or another."""
    return next((p for p in PLATFORMS.values() if any(t.endswith("_" + p.name) for t in platform_tag.split("."))),
                None)
