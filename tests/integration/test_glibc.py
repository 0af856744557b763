"""Building for an older glibc than the build root's: a small C++ package (tests/fixtures/glibc_probe) built in the
Debian 11 root through build -> repair -> verify, for glibc 2.28 (the recipes' default) and for the root's own 2.31;
and the same package using a function glibc 2.28 lacks, which must stop the build with its name."""

from __future__ import annotations

import ctypes
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llamawheel.wheel.elf import read_elf

from .conftest import ROOT, llamawheel

PROBE = ROOT / "tests" / "fixtures" / "glibc_probe"
LIBRARY = "glibc_probe/lib/libglibcprobe.so"
POINTS = 4096


def _build(out: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, list[Path]]:
    result = llamawheel("build", "cpu", "--source", str(PROBE), "--out", str(out), *args, env=env)
    return result.returncode, result.stdout + result.stderr, sorted(out.glob("*.whl"))


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The probe built for glibc 2.28 (bound) and 2.31 (the root's own: nothing bound), each unpacked."""
    out: dict[str, Path] = {}
    for glibc in ("2.28", "2.31"):  # named, whatever LLAMAWHEEL_GLIBC says
        folder = tmp_path_factory.mktemp(f"glibc-{glibc}")
        rc, output, wheels = _build(folder, "--glibc", glibc)
        assert rc == 0, output[-4000:]
        (wheel,) = wheels
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(folder / "unpacked")
        out[glibc] = wheel
    return out


def _uses(wheel: Path) -> dict[str, frozenset[str]]:
    with zipfile.ZipFile(wheel) as zf:
        return read_elf(zf.read(LIBRARY)).uses


def test_bound_to_the_old_exp_the_wheel_is_tagged_for_glibc_2_28(probes: dict[str, Path]) -> None:
    old, new = _uses(probes["2.28"]), _uses(probes["2.31"])
    # without the binding the linker takes glibc 2.29's exp, log, log2 and pow ...
    assert {"exp", "log", "log2", "pow"} <= new["GLIBC_2.29"]
    # ... with it, the versions every glibc since 2.2.5 has
    assert "GLIBC_2.29" not in old and {"exp", "log", "log2", "pow"} <= old["GLIBC_2.2.5"]
    # std::filesystem is GCC 9's (GLIBCXX_3.4.26): linked in, the library needs no libstdc++ at all
    assert any(v.startswith("GLIBCXX_3.4.2") for v in new) and not any(v.startswith("GLIBCXX") for v in old)
    assert probes["2.28"].name == "glibc_probe-0.1.0+cpu-py3-none-manylinux_2_28_x86_64.whl"
    assert probes["2.31"].name == "glibc_probe-0.1.0+cpu-py3-none-manylinux_2_31_x86_64.whl"


def test_the_manifest_and_verify_static_say_what_was_bound(probes: dict[str, Path]) -> None:
    wheel = probes["2.28"]
    manifest = json.loads(wheel.with_name(wheel.name + ".json").read_text())
    assert manifest["glibc"]["target"] == "2.28" and manifest["glibc"]["build_env_glibc"] == "2.31"
    assert manifest["glibc"]["bound"]["exp"] == "GLIBC_2.2.5"
    assert manifest["glibc"]["cxx_runtime"] == "libstdc++ linked statically, hidden"
    checks = {c["name"]: c for c in manifest["verify_static"]["checks"]}
    assert checks["glibc 2.28"]["ok"], checks
    assert "RHEL 8 (Rocky, Alma, Oracle)" in checks["platform tag"]["detail"].split("; not on")[0]
    result = llamawheel("verify-static", str(wheel))
    assert "PASS  glibc 2.28" in result.stdout, result.stdout


def test_old_and_new_symbol_versions_give_the_same_bits(probes: dict[str, Path]) -> None:
    results = []
    for wheel in (probes["2.28"], probes["2.31"]):
        lib = ctypes.CDLL(str(wheel.parent / "unpacked" / LIBRARY))
        buffer = (ctypes.c_double * (4 * POINTS))()
        lib.probe_math(buffer, ctypes.c_size_t(POINTS))
        assert lib.probe_parent_length(b"/usr/lib/x.so") == len("/usr/lib")
        results.append(bytes(buffer))
    assert results[0] == results[1]


def test_a_function_the_target_glibc_lacks_stops_the_build_with_its_name(tmp_path: Path) -> None:
    rc, output, wheels = _build(tmp_path, "--glibc", "2.28", env={"CMAKE_ARGS": "-DPROBE_NEWER=ON"})
    assert rc == 8  # a repair error
    assert "built for glibc 2.28 (manylinux_2_28)" in output
    assert ("libglibcprobe.so uses posix_spawn_file_actions_addchdir_np@GLIBC_2.29: glibc 2.28 has no "
            "posix_spawn_file_actions_addchdir_np") in output
    assert "exp@" not in output  # bound: not among what stops it
    assert wheels == []  # nothing pip could take is left behind


def test_an_impossible_target_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    rc, output, _ = _build(tmp_path, "--glibc", "2.12")
    assert rc == 2 and "--glibc 2.12: older than 2.17 (manylinux2014)" in output
    rc, output, _ = _build(tmp_path, "--glibc", "rhel8")
    assert rc == 2 and "--glibc 'rhel8' is not a glibc version like 2.28" in output
    rc, output, _ = _build(tmp_path, "--glibc", "2.29")
    assert rc == 2 and "glibc 2.29: auditwheel has no manylinux policy for it" in output
    assert "choose one of 2.17, 2.24, 2.26, 2.27, 2.28, 2.31" in output
    assert "fetching" not in output  # refused before any download


@pytest.mark.parametrize("which", ["cpu_wheel", "cu130_wheel"])
def test_the_llama_wheels_ci_builds_are_manylinux_2_28(which: str, request: pytest.FixtureRequest) -> None:
    wheel: Path = request.getfixturevalue(which)
    assert wheel.name.endswith("-py3-none-manylinux_2_28_x86_64.whl")
    # auditwheel itself agrees: nothing constrains the wheel to a newer glibc than 2.28
    shown = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True)
    words = " ".join(shown.stdout.split())
    constrained = re.search(r'constrains the platform tag to "manylinux_2_(\d+)_x86_64"', words)
    assert constrained and int(constrained[1]) <= 28, shown.stdout + shown.stderr
    # verify-static: nothing needs more than glibc 2.28, and RHEL 8 is among the systems that take it
    result = llamawheel("verify-static", str(wheel))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS  glibc 2.28" in result.stdout
    platform = next(line for line in result.stdout.splitlines() if "platform tag" in line)
    assert "RHEL 8 (Rocky, Alma, Oracle), Anolis 8, openEuler 20.03, Kylin V10, UOS 20, Debian 11" in platform
    # no library needs the system's libstdc++ (linked in), and exp and friends are glibc 2.2.5's
    with zipfile.ZipFile(wheel) as zf:
        infos = {n: read_elf(zf.read(n)) for n in zf.namelist() if n.endswith(".so")}
    assert not [n for n, i in infos.items() if "libstdc++.so.6" in i.needed]
    assert not [n for n, i in infos.items() if any(v.startswith("GLIBC_2.29") for v in i.uses)]
    assert "exp" in infos["llama_cpp/lib/libllama.so"].uses["GLIBC_2.2.5"]
