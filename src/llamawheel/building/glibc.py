"""Building for an older glibc than the build environment's own: the libraries are bound, at link time, to symbol
versions that the target glibc already had.

glibc keeps every old version of a symbol whose behaviour changed (``exp@GLIBC_2.2.5`` beside ``exp@@GLIBC_2.29``);
the linker picks the newest, so a library built against glibc 2.31 needs 2.29 for ``exp``. A header, generated
from the build environment's own ``libc``/``libm``/``libpthread``/... version tables and forced into every C, C++
and CUDA host compile (``-include``), binds each such symbol to its newest version no later than the target
(``__asm__(".symver exp, exp@GLIBC_2.2.5")``). Only what a compile uses is bound (an unused ``.symver`` leaves no
trace). A symbol with no version that old (a function the target glibc does not have) is left alone, and the
check after the build (`llamawheel.repair`) names it and the library that uses it.

The C++ runtime is the other half: libstdc++'s symbol versions follow GCC, not glibc, and the systems of an older
glibc have an older GCC's libstdc++ (RHEL 8: GCC 8, GLIBCXX_3.4.25). The libraries link it statically, with its
symbols hidden (each library keeps a private copy of what it uses; nothing it exports can clash with the system's
libstdc++).
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerSymSection

from llamawheel.core import fileio
from llamawheel.core.errors import UsageError

GLIBC_LIBRARIES = ("libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libutil.so.1",
                   "libresolv.so.2", "libanl.so.1")
"""The libraries of glibc whose symbols carry ``GLIBC_`` versions."""

OLDEST = (2, 17)
"""The oldest target: manylinux2014 (CentOS 7), the oldest glibc NVIDIA's CUDA libraries still support."""

SPLIT = (2, 34)
"""glibc 2.34 moved libpthread, libdl and librt into libc: a symbol bound to an older version from there would be
looked up in libc, where older systems do not have it. A build environment this new cannot target older ones."""

OTHER_ABI = {
    # What the older version takes or does differs from what the headers of a newer glibc declare: binding to it
    # would compile against one function and call another. A build that uses one of these fails instead.
    "totalorder*": "2.31 passes the arguments by pointer",
    "pthread_cond_*": "2.3.2 changed the condition variable's layout",
    "sched_[gs]etaffinity": "2.3.4 added the set's size",
    "glob": "2.27 changed how glob_t's callbacks are called",
    "glob64": "2.27 changed how glob_t's callbacks are called",
    "realpath": "2.3 made a NULL buffer allocate",
    "regexec": "2.3.4 added REG_STARTEND",
    "nftw": "2.3.3 added flags", "nftw64": "2.3.3 added flags",
    "posix_spawn": "2.15 changed how a failed exec is reported",
    "posix_spawnp": "2.15 changed how a failed exec is reported",
    "fmemopen": "2.22 made it follow POSIX",
    "quick_exit": "2.24 changed which handlers it runs",
}
"""Symbols (shell patterns) never bound to an older version, and why."""

HEADER_NAME = "glibc-compat.h"


def parse_version(text: str, what: str = "glibc") -> tuple[int, int]:
    """``"2.28"`` -> (2, 28); anything else is a usage error naming ``what``."""
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    if not match:
        raise UsageError(f"{what} {text!r} is not a glibc version like 2.28")
    return int(match[1]), int(match[2])


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _number(version: str) -> tuple[int, ...] | None:
    """``GLIBC_2.2.5`` -> (2, 2, 5); None for anything that is not a numbered GLIBC version (``GLIBC_PRIVATE``)."""
    match = re.fullmatch(r"GLIBC_(\d+(?:\.\d+)*)", version)
    return tuple(int(x) for x in match[1].split(".")) if match else None


@dataclass(frozen=True)
class Definition:
    symbol: str
    default: str
    """The version the linker binds to today (``GLIBC_2.29``)."""
    older: tuple[str, ...]
    """The other versions the library still exports (``GLIBC_2.2.5``), oldest first."""
    library: str


def version_table(path: Path) -> list[Definition]:
    """Every symbol the glibc library at ``path`` defines in more than one version, or whose default version is
    numbered: its default and older versions."""
    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            verdef = elf.get_section_by_name(".gnu.version_d")
            versym = elf.get_section_by_name(".gnu.version")
            dynsym = elf.get_section_by_name(".dynsym")
            if not isinstance(verdef, GNUVerDefSection) or not isinstance(versym, GNUVerSymSection) or dynsym is None:
                return []
            names = {entry["vd_ndx"]: next(iter(aux)).name for entry, aux in verdef.iter_versions()}
            found: dict[str, tuple[list[str], list[str]]] = {}
            for index, sym in enumerate(dynsym.iter_symbols()):  # type: ignore[attr-defined]
                if not sym.name or sym["st_shndx"] in ("SHN_UNDEF", "SHN_ABS"):  # SHN_ABS: a version's own name
                    continue
                raw = versym.get_symbol(index).entry["ndx"]
                raw = raw if isinstance(raw, int) else 1
                name = names.get(raw & 0x7FFF)
                if name is None or _number(name) is None:
                    continue
                defaults, hidden = found.setdefault(sym.name, ([], []))
                (hidden if raw & 0x8000 else defaults).append(name)
    except (OSError, ELFError) as exc:
        raise UsageError(f"cannot read the symbol versions of {path}: {exc}") from None
    out = []
    for symbol, (defaults, hidden) in sorted(found.items()):
        if not defaults:
            continue
        default = max(defaults, key=lambda v: _number(v) or ())
        older = sorted(set(hidden) - {default}, key=lambda v: _number(v) or ())
        out.append(Definition(symbol, default, tuple(older), path.name))
    return out


def other_abi(symbol: str) -> str | None:
    """Why ``symbol``'s older versions may not be bound to, or None."""
    return next((why for pattern, why in OTHER_ABI.items() if fnmatch.fnmatchcase(symbol, pattern)), None)


CLOCK_WAITS = {"pthread_cond_clockwait", "pthread_mutex_clocklock", "pthread_rwlock_clockrdlock",
               "pthread_rwlock_clockwrlock"}
CLOCK_WAIT_MACROS = ("_GLIBCXX_USE_PTHREAD_COND_CLOCKWAIT", "_GLIBCXX_USE_PTHREAD_MUTEX_CLOCKLOCK",
                     "_GLIBCXX_USE_PTHREAD_RWLOCK_CLOCKLOCK")
"""libstdc++'s switches for those functions (``bits/c++config.h``), each set when GCC's own glibc had them."""


@dataclass
class Binding:
    """What a build for glibc ``target`` binds, from the version tables of the build environment's glibc."""

    target: tuple[int, int]
    env_glibc: tuple[int, int]
    bound: dict[str, str] = field(default_factory=dict)
    """symbol -> the version it is bound to (``exp`` -> ``GLIBC_2.2.5``)."""
    newer: dict[str, str] = field(default_factory=dict)
    """symbol -> its version, for symbols the target glibc does not have in any version this build may use (new
    functions, and the `OTHER_ABI` ones): a library that uses one cannot run there."""
    refused: set[str] = field(default_factory=set)
    """The symbols of `newer` that do have a version old enough, whose ABI differs (`OTHER_ABI`)."""
    static_cxx: bool = True
    """Link libstdc++ statically, its symbols hidden (libgcc_s, the unwinder, stays the system's: every manylinux
    system has it, and its versions the libraries need are old)."""

    @property
    def needed(self) -> bool:
        """Whether the environment's glibc is newer than the target (else nothing is to be done)."""
        return self.env_glibc > self.target

    def header(self) -> str:
        lines = [
            f"/* Written by llamawheel: binds each glibc symbol whose default version is newer than glibc "
            f"{dotted(self.target)} to the newest",
            f"   version no later than that, read from the build environment's glibc {dotted(self.env_glibc)}. "
            "Forced into every compile with -include. */",
            "#if !defined(__CUDA_ARCH__) && !defined(__ASSEMBLER__)",
            *(f'__asm__(".symver {s}, {s}@{v}");' for s, v in sorted(self.bound.items())),
            "#endif",
        ]
        if CLOCK_WAITS & set(self.newer):
            lines += [
                "/* The target lacks pthread_cond_clockwait and pthread_{mutex,rwlock}_clocklock (glibc 2.30), which",
                "   libstdc++'s headers call for timed waits on steady_clock when the build's glibc has them: without",
                "   these macros they wait with pthread_cond_timedwait and friends instead. */",
                "#if defined(__cplusplus) && !defined(__CUDA_ARCH__)",
                "#include <bits/c++config.h>",
                *(f"#undef {macro}" for macro in CLOCK_WAIT_MACROS),
                "#endif",
            ]
        return "\n".join([*lines, ""])

    def why_newer(self, symbol: str) -> str:
        """Why the target glibc cannot give ``symbol`` (one of `newer`), for an error."""
        if symbol in self.refused:
            return f"its version in glibc {dotted(self.target)} has another ABI ({other_abi(symbol)})"
        return f"glibc {dotted(self.target)} has no {symbol}"

    def flags(self, header: str) -> dict[str, str]:
        """The compiler and linker flags, as the environment variables CMake reads them from on its first run."""
        # --gc-sections: libstdc++.a is built with a section per function, so only what is used is linked in
        # (a library using std::filesystem takes 120 KB of it instead of 1.1 MB)
        link = ["-static-libstdc++", "-Wl,--exclude-libs,libstdc++.a", "-Wl,--gc-sections"] if self.static_cxx else []
        return {
            "CFLAGS": f"-include {header}",
            "CXXFLAGS": f"-include {header}",
            "CUDAFLAGS": f"-Xcompiler=-include,{header}",
            "LDFLAGS": " ".join(link),
        }

    def manifest_fields(self) -> dict[str, Any]:
        return {"glibc": {
            "target": dotted(self.target),
            "build_env_glibc": dotted(self.env_glibc),
            "bound": {s: v for s, v in sorted(self.bound.items())} if self.needed else {},
            "cxx_runtime": "libstdc++ linked statically, hidden" if self.needed and self.static_cxx
            else "the system's libstdc++",
        }}


def this_machine() -> tuple[int, int]:
    """This machine's glibc."""
    return parse_version((os.confstr("CS_GNU_LIBC_VERSION") or "glibc 2.17").split()[-1])


def check_reachable(target: tuple[int, int], env_glibc: tuple[int, int]) -> None:
    """Refuse a target a build environment of glibc ``env_glibc`` cannot build for (before anything is fetched; a
    target older than `OLDEST` never gets here: the option and the recipe key refuse it)."""
    if env_glibc >= SPLIT > target:
        raise UsageError(
            f"a build environment with glibc {dotted(env_glibc)} cannot build for glibc {dotted(target)}: glibc "
            f"{dotted(SPLIT)} moved libpthread, libdl and librt into libc",
            "build in the bullseye root (--build-env bullseye), or target this glibc (--glibc "
            f"{dotted(env_glibc)})")


def binding(target: tuple[int, int], libdir: Path, env_glibc: tuple[int, int]) -> Binding:
    """The binding for ``target`` from the glibc libraries in ``libdir`` (a build root's
    ``lib/x86_64-linux-gnu``), which are glibc ``env_glibc``."""
    check_reachable(target, env_glibc)
    result = Binding(target, env_glibc)
    if not result.needed:
        return result
    if not (libdir / "libc.so.6").exists():
        raise UsageError(f"no glibc in {libdir} (libc.so.6) to read symbol versions from",
                         "build in the bullseye root (the recipes' default), whose glibc llamawheel knows")
    for name in GLIBC_LIBRARIES:
        path = libdir / name
        if not path.exists():
            continue
        for d in version_table(path.resolve()):
            if (_number(d.default) or ()) <= target:
                continue
            usable = [v for v in d.older if (_number(v) or ()) <= target]
            if usable and not other_abi(d.symbol):
                result.bound[d.symbol] = usable[-1]
            else:
                result.newer[d.symbol] = d.default
                if usable:
                    result.refused.add(d.symbol)
    return result


def write_header(binding_: Binding, folder: Path) -> Path:
    """The header in ``folder`` (the build's own), rewritten only when it changed (its time is in no hash, but a
    compile cache keyed on the file's content sees the same bytes)."""
    path = folder / HEADER_NAME
    text = binding_.header()
    if not path.is_file() or path.read_text() != text:
        fileio.write_file(path, text.encode())
    return path
