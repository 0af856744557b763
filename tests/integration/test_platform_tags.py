"""The platform tag from what real libraries need: shared libraries compiled here, each needing one symbol
version too new for an older policy (gcc, as every build machine has)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from llamawheel.wheel import policy
from llamawheel.wheel.elf import ElfInfo, read_elf_file

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None,
                                reason="needs gcc and g++")

SOURCES = {
    # puts@GLIBC_2.2.5 only: the oldest policy
    "libplain.so": ("c", '#include <stdio.h>\nvoid hello(void) { puts("hi"); }\n', []),
    # exp@GLIBC_2.29 (glibc's new exp, as llama.cpp's math gets): one version past manylinux_2_28
    "libexp.so": ("c", "#include <math.h>\ndouble e(double x) { return exp(x); }\n", ["-lm"]),
    # libstdc++'s assertion handler, new in GCC 12 (GLIBCXX_3.4.30): past manylinux_2_34
    "libassert.so": ("c++", "#include <vector>\nint at(std::vector<int>& v, int i) { return v[i]; }\n",
                     ["-D_GLIBCXX_ASSERTIONS"]),
}


def build(tmp_path: Path, name: str) -> ElfInfo:
    lang, code, flags = SOURCES[name]
    source = tmp_path / f"{name}.{'c' if lang == 'c' else 'cpp'}"
    source.write_text(code)
    compiler = "gcc" if lang == "c" else "g++"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", str(source), "-o", str(tmp_path / name), *flags],
                   check=True)
    return read_elf_file(tmp_path / name)


def glibc_of_this_machine() -> tuple[int, ...]:
    out = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return tuple(int(x) for x in out.split()[-1].split("."))


def test_a_plain_library_earns_the_oldest_tag(tmp_path: Path) -> None:
    info = build(tmp_path, "libplain.so")
    assert info.required["GLIBC"] == {"2.2.5"}
    assert policy.platform_tag([info]) == "manylinux_2_17_x86_64"


def test_one_glibc_symbol_too_new_moves_the_tag_and_is_named(tmp_path: Path) -> None:
    if glibc_of_this_machine() < (2, 29):
        pytest.skip("this glibc predates exp@GLIBC_2.29")
    info = build(tmp_path, "libexp.so")
    assert "2.29" in info.required["GLIBC"]
    assert policy.platform_tag({"libexp.so": info}) == "manylinux_2_31_x86_64"
    older = next(p for p in policy.policies() if p.name == "manylinux_2_28")
    assert older.violations({"libexp.so": info}) == ["libexp.so needs GLIBC_2.29"]


def test_one_libstdcxx_symbol_too_new_moves_the_tag(tmp_path: Path) -> None:
    info = build(tmp_path, "libassert.so")
    if "3.4.30" not in info.required.get("GLIBCXX", frozenset()):
        pytest.skip(f"this g++ does not reference GLIBCXX_3.4.30 (it needs {sorted(info.required['GLIBCXX'])})")
    assert policy.platform_tag([info]) == "manylinux_2_35_x86_64"
    older = next(p for p in policy.policies() if p.name == "manylinux_2_34")
    assert older.violations({"libassert.so": info}) == ["libassert.so needs GLIBCXX_3.4.30"]
    yes, no = policy.admitted(policy.needs_of([info]), "manylinux_2_35_x86_64")
    assert "RHEL 9" in no and "Debian 12" in yes  # GCC 11's libstdc++ lacks 3.4.30
