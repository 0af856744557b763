"""Facts read from ELF files and CUDA fat binaries, and the platform tag they imply."""

from __future__ import annotations

import struct

import pytest

from llamawheel.verify import static as verify_static
from llamawheel.wheel import elf
from llamawheel.wheel import policy as policy_module
from llamawheel.wheel.distmeta import WheelName
from llamawheel.wheel.elf import ElfInfo, FatbinEntry

from .helpers import find_system_libz

FATBIN_HEADER = struct.Struct("<IHHQ")
ENTRY_HEADER = struct.Struct("<HHIQII HHI")
ENTRY_HEADER_SIZE = 64  # real entries have a longer header than the fields llamawheel reads


def fat_entry(kind: int, arch: int, payload: bytes) -> bytes:
    head = ENTRY_HEADER.pack(kind, 0x0101, ENTRY_HEADER_SIZE, len(payload), 0, 0, 0, 1, arch)
    return head.ljust(ENTRY_HEADER_SIZE, b"\0") + payload


def fatbin(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return FATBIN_HEADER.pack(elf.FATBIN_MAGIC, 1, FATBIN_HEADER.size, len(body)) + body


def pad8(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


def test_two_fat_binaries_with_padding() -> None:
    first = fatbin(fat_entry(elf.KIND_CUBIN, 86, b"\x01" * 40), fat_entry(elf.KIND_CUBIN, 90, b"\x02" * 13))
    second = fatbin(fat_entry(elf.KIND_PTX, 90, b".version 9.0\n.target sm_90\n\0"))
    assert len(first) % 8 != 0  # the parser must realign after an odd-sized fat binary
    section = pad8(first) + b"\0" * 16 + second
    entries = elf.parse_fatbin(section)
    assert entries == [FatbinEntry("sass", 86), FatbinEntry("sass", 90), FatbinEntry("ptx", 90)]
    info = ElfInfo(fatbin=entries)
    assert info.sass_archs == {86, 90}
    assert info.ptx_archs == {90}


def test_entries_of_other_kinds_are_skipped() -> None:
    data = fatbin(fat_entry(4, 75, b"elf"), fat_entry(elf.KIND_CUBIN, 120, b"cubin"))
    assert elf.parse_fatbin(data) == [FatbinEntry("sass", 120)]


def test_truncated_fat_binary_keeps_what_is_complete() -> None:
    data = fatbin(fat_entry(elf.KIND_CUBIN, 86, b"x" * 32), fat_entry(elf.KIND_CUBIN, 89, b"y" * 32))
    cut = FATBIN_HEADER.size + ENTRY_HEADER_SIZE + 32 + ENTRY_HEADER.size // 2
    assert elf.parse_fatbin(data[:cut]) == [FatbinEntry("sass", 86)]


@pytest.mark.parametrize(
    "data",
    [b"", b"\0" * 64, b"not a fat binary at all, just text " * 8, bytes(range(256)) * 4],
    ids=["empty", "zeros", "text", "bytes"],
)
def test_garbage_holds_no_entries(data: bytes) -> None:
    assert elf.parse_fatbin(data) == []


def test_is_elf() -> None:
    assert elf.is_elf(b"\x7fELF\x02\x01\x01")
    assert not elf.is_elf(b"#!/bin/sh\n")


def test_read_elf_of_non_elf_bytes_is_empty() -> None:
    info = elf.read_elf(b"\x7fELF but truncated")
    assert info.soname is None
    assert info.needed == []
    assert info.fatbin == []


def test_read_real_shared_library(libz_bytes: bytes) -> None:
    info = elf.read_elf(libz_bytes)
    assert info.soname is not None and info.soname.startswith("libz.so")
    assert "libc.so.6" in info.needed
    assert info.machine == "EM_X86_64"
    assert info.symbol_versions["GLIBC"] >= (2, 2)
    assert info.fatbin == []
    assert info.sass_archs == set()


def test_every_needed_version_is_read(libz_bytes: bytes) -> None:
    info = elf.read_elf(libz_bytes)
    assert "2.2.5" in info.required["GLIBC"]
    assert info.symbol_versions["GLIBC"] == max(tuple(map(int, v.split("."))) for v in info.required["GLIBC"])


def test_read_elf_file_on_the_system_libz() -> None:
    path = find_system_libz()
    if path is None:
        pytest.skip("no system libz.so.1 found under /usr/lib, /lib or /lib64: need a real ELF shared library")
    info = elf.read_elf_file(path)
    assert info.soname == "libz.so.1"
    assert "GLIBC" in info.symbol_versions
    assert info.runpath == []


def needs(**families: str) -> ElfInfo:
    """A library needing these versions: needs(GLIBC="2.2.5 2.29") -> GLIBC_2.2.5 and GLIBC_2.29."""
    return ElfInfo(required={family: frozenset(v.split()) for family, v in families.items()})


@pytest.mark.parametrize(
    ("info", "tag"),
    [
        (needs(), "manylinux_2_17_x86_64"),
        (needs(GLIBC="2.2.5"), "manylinux_2_17_x86_64"),
        (needs(GLIBC="2.2.5 2.14"), "manylinux_2_17_x86_64"),
        (needs(GLIBC="2.34"), "manylinux_2_34_x86_64"),
        (needs(GLIBC="2.28", GLIBCXX="3.4.24"), "manylinux_2_28_x86_64"),
        (needs(GLIBC="2.28", GLIBCXX="3.4.25"), "manylinux_2_31_x86_64"),
        # exp@GLIBC_2.29 alone (llama.cpp's math): past 2_28
        (needs(GLIBC="2.2.5 2.29"), "manylinux_2_31_x86_64"),
        # libstdc++ from GCC 12 (GLIBCXX_3.4.30) is newer than manylinux_2_34's: the tag must say 2_35
        (needs(GLIBC="2.34", GLIBCXX="3.4.30"), "manylinux_2_35_x86_64"),
        (needs(GLIBC="2.17", CXXABI="1.3.13"), "manylinux_2_34_x86_64"),
        # families beyond glibc and libstdc++: libgcc_s's GCC_ versions, zlib's, the non-numbered CXXABI_TM_1
        (needs(GLIBC="2.17", CXXABI="1.3 TM_1", GCC="3.0 4.2.0"), "manylinux_2_17_x86_64"),
        (needs(GLIBC="2.17", GCC="12.0.0"), "manylinux_2_35_x86_64"),  # libgcc_s of GCC 12
        (needs(GLIBC="2.17", ZLIB="1.2.9"), "manylinux_2_27_x86_64"),
        (needs(GLIBC="2.17", ZLIB="1.2.12"), "manylinux_2_37_x86_64"),
        (needs(GLIBC="2.99"), "linux_x86_64"),  # newer than any policy
        # a library's own version names (libcudart.so.13's) are not the system's business
        (needs(GLIBC="2.17", LIBCUDART="13"), "manylinux_2_17_x86_64"),
    ],
)
def test_platform_tag_follows_every_symbol_version_auditwheel_checks(info: ElfInfo, tag: str) -> None:
    assert policy_module.platform_tag([info]) == tag


def test_what_keeps_a_wheel_from_an_older_tag_is_named() -> None:
    policy = next(p for p in policy_module.policies() if p.name == "manylinux_2_28")
    libs = {"libllama.so": needs(GLIBC="2.2.5 2.29", GLIBCXX="3.4.21"), "libggml.so": needs(GLIBC="2.17")}
    assert policy.violations(libs) == ["libllama.so needs GLIBC_2.29"]


def test_which_distributions_take_a_wheel() -> None:
    yes, no = policy_module.admitted({"GLIBC": (2, 34), "GLIBCXX": (3, 4, 30)}, "manylinux_2_35_x86_64")
    assert "Debian 12" in yes and "Ubuntu 22.04" in yes
    assert no == ["CentOS 7", policy_module.RHEL8, "Anolis 8", "openEuler 20.03", "Kylin V10", "UOS 20", "Debian 11",
                  "Ubuntu 20.04", "RHEL 9"]
    yes, no = policy_module.admitted({"GLIBC": (2, 29), "GLIBCXX": (3, 4, 28)}, "manylinux_2_31_x86_64")
    assert no[:2] == ["CentOS 7", policy_module.RHEL8] and "Debian 11" in yes
    # built for glibc 2.28 with libstdc++ linked in: the 2.28 systems, GCC 7 or 8, all take it; CentOS 7 does not
    yes, no = policy_module.admitted({"GLIBC": (2, 27), "GCC": (4, 2, 0)}, "manylinux_2_28_x86_64")
    assert no == ["CentOS 7"] and yes[:5] == [policy_module.RHEL8, "Anolis 8", "openEuler 20.03", "Kylin V10", "UOS 20"]
    # the same libraries needing GCC 8's libstdc++: not on the systems of GCC 7
    yes, no = policy_module.admitted({"GLIBC": (2, 27), "GLIBCXX": (3, 4, 25)}, "manylinux_2_28_x86_64")
    assert no == ["CentOS 7", "openEuler 20.03", "Kylin V10", "UOS 20"]


def test_platform_tag_takes_the_newest_library() -> None:
    infos = [needs(GLIBC="2.17"), needs(GLIBC="2.34"), ElfInfo()]
    assert policy_module.platform_tag(infos) == "manylinux_2_34_x86_64"
    assert policy_module.platform_tag([]) == "manylinux_2_17_x86_64"
    assert policy_module.platform_tag([ElfInfo()], machine="aarch64") == "manylinux_2_17_aarch64"


def _platform_check(platform: str, libs: dict[str, ElfInfo]) -> list[tuple[bool, str]]:
    report = verify_static.Report("pkg.whl", "1.0", 0, "a claim")
    verify_static._check_platform(report, libs, WheelName.parse(f"pkg-1.0-py3-none-{platform}.whl"))
    return [(not c.failed, c.detail) for c in report.checks]


def test_verify_static_fails_a_tag_older_than_the_libraries_need() -> None:
    ((ok, detail),) = _platform_check("manylinux_2_28_x86_64", {"pkg/libexp.so": needs(GLIBC="2.2.5 2.29")})
    assert not ok
    assert detail == ("manylinux_2_28_x86_64 claims too old a system: libexp.so needs GLIBC_2.29"
                      " (earned: manylinux_2_31)")


def test_verify_static_passes_an_honest_or_cautious_tag_and_names_the_distributions() -> None:
    libs = {"pkg/lib.so": needs(GLIBC="2.17", GLIBCXX="3.4.19")}
    ((ok, detail),) = _platform_check("manylinux_2_17_x86_64.manylinux2014_x86_64", libs)
    assert ok and detail.startswith("manylinux_2_17 earned (needs GLIBC_2.17, GLIBCXX_3.4.19); installs on CentOS 7, "
                                    "RHEL 8 (Rocky, Alma, Oracle),")
    ((ok, detail),) = _platform_check("manylinux_2_35_x86_64", libs)  # newer than needed: fewer systems, honest
    assert ok and "not on CentOS 7, RHEL 8 (Rocky, Alma, Oracle), Anolis 8" in detail
    assert "Debian 11, Ubuntu 20.04, RHEL 9" in detail
    assert _platform_check("manylinux_2_35_x86_64", {}) == []  # no libraries: nothing to judge
