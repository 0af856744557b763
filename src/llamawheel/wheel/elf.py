"""Facts read from ELF files, not names: SONAME, NEEDED, RUNPATH, the glibc symbol
versions a library needs, and the architectures its CUDA fat binary holds."""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection, GNUVerSymSection
from elftools.elf.sections import SymbolTableSection

FATBIN_MAGIC = 0xBA55ED50
_FATBIN_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, size of the entries
# kind, ?, header size, payload size, compressed size, ?, minor, major, arch
_ENTRY_HEADER = struct.Struct("<HHIQII HHI")
KIND_PTX = 1
KIND_CUBIN = 2
_VERSION = re.compile(r"^([A-Z]+)_(\w+(?:\.\w+)*)$")
"""A version a library needs from a system library: ``GLIBC_2.29``, ``GLIBCXX_3.4.30``, ``CXXABI_TM_1``,
``GCC_7.0.0``; the family is the upper-case prefix."""


@dataclass(frozen=True)
class FatbinEntry:
    kind: str  # "sass" (a cubin: machine code) or "ptx"
    arch: int  # 90 for sm_90 / compute_90


@dataclass
class ElfInfo:
    soname: str | None = None
    needed: list[str] = field(default_factory=list)
    runpath: list[str] = field(default_factory=list)
    required: dict[str, frozenset[str]] = field(default_factory=dict)
    """Every symbol version needed, per family: {"GLIBC": {"2.2.5", "2.29"}, "CXXABI": {"1.3", "TM_1"}}."""
    fatbin: list[FatbinEntry] = field(default_factory=list)
    machine: str = ""
    exports: set[str] = field(default_factory=set)
    """The ``ggml_backend_*`` functions the library defines (what ggml looks up in a backend module)."""
    uses: dict[str, frozenset[str]] = field(default_factory=dict)
    """The symbols the library takes from others, per version needed: {"GLIBC_2.29": {"exp", "log"}}."""

    @property
    def symbol_versions(self) -> dict[str, tuple[int, ...]]:
        """The newest numbered version needed per family: {"GLIBC": (2, 34), "GLIBCXX": (3, 4, 30)}."""
        out: dict[str, tuple[int, ...]] = {}
        for family, versions in self.required.items():
            numbered = [tuple(int(x) for x in v.split(".")) for v in versions if re.fullmatch(r"\d+(\.\d+)*", v)]
            if numbered:
                out[family] = max(numbered)
        return out

    @property
    def sass_archs(self) -> set[int]:
        return {e.arch for e in self.fatbin if e.kind == "sass"}

    @property
    def ptx_archs(self) -> set[int]:
        return {e.arch for e in self.fatbin if e.kind == "ptx"}


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def parse_fatbin(data: bytes) -> list[FatbinEntry]:
    """Every entry of every fat binary in a ``.nv_fatbin`` section."""
    entries: list[FatbinEntry] = []
    pos = 0
    while pos + _FATBIN_HEADER.size <= len(data):
        magic, _version, header_size, size = _FATBIN_HEADER.unpack_from(data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # fat binaries are 8-byte aligned; skip padding
            continue
        entry = pos + header_size
        end = min(entry + size, len(data))
        while entry + _ENTRY_HEADER.size <= end:
            kind, _, ehead, payload, _csize, _, _minor, _major, arch = _ENTRY_HEADER.unpack_from(data, entry)
            if ehead == 0:
                break
            if kind in (KIND_PTX, KIND_CUBIN):
                entries.append(FatbinEntry("ptx" if kind == KIND_PTX else "sass", arch))
            entry += ehead + payload
        pos = max(end, pos + 8)
        pos = (pos + 7) & ~7
    return entries


def read_elf(data: bytes) -> ElfInfo:
    info = ElfInfo()
    try:
        elf = ELFFile(io.BytesIO(data))
    except ELFError:
        return info
    info.machine = elf["e_machine"]
    version_names: dict[int, str] = {}
    undefined: list[tuple[int, str]] = []  # (index in .dynsym, name)
    versym: GNUVerSymSection | None = None
    for section in elf.iter_sections():
        if isinstance(section, DynamicSection):
            for tag in section.iter_tags():
                kind = tag.entry.d_tag
                if kind == "DT_NEEDED":
                    info.needed.append(tag.needed)  # type: ignore[attr-defined]
                elif kind == "DT_SONAME":
                    info.soname = tag.soname  # type: ignore[attr-defined]
                elif kind in ("DT_RUNPATH", "DT_RPATH"):
                    path: str = getattr(tag, "runpath" if kind == "DT_RUNPATH" else "rpath")
                    info.runpath.extend(p for p in path.split(":") if p)
        elif isinstance(section, GNUVerNeedSection):
            required: dict[str, set[str]] = {}
            for _verneed, auxiliaries in section.iter_versions():
                for aux in auxiliaries:
                    version_names[aux["vna_other"]] = aux.name
                    match = _VERSION.match(aux.name)
                    if match:
                        required.setdefault(match.group(1), set()).add(match.group(2))
            info.required = {family: frozenset(v) for family, v in required.items()}
        elif section.name == ".nv_fatbin":
            info.fatbin = parse_fatbin(section.data())
        elif isinstance(section, GNUVerSymSection):
            versym = section
        elif isinstance(section, SymbolTableSection) and section.name == ".dynsym":
            symbols = list(section.iter_symbols())
            info.exports = {
                sym.name for sym in symbols
                if sym.name.startswith("ggml_backend_") and sym["st_shndx"] != "SHN_UNDEF"
                and sym["st_info"]["type"] == "STT_FUNC"
            }
            undefined = [(i, sym.name) for i, sym in enumerate(symbols) if sym.name and sym["st_shndx"] == "SHN_UNDEF"]
    if versym is not None and version_names:
        uses: dict[str, set[str]] = {}
        for index, name in undefined:
            raw = versym.get_symbol(index).entry["ndx"]
            version = version_names.get(raw & 0x7FFF) if isinstance(raw, int) else None
            if version:
                uses.setdefault(version, set()).add(name)
        info.uses = {version: frozenset(names) for version, names in uses.items()}
    return info


def read_elf_file(path: Path) -> ElfInfo:
    return read_elf(path.read_bytes())
