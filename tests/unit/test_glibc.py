"""The glibc binding: version tables read from this machine's real glibc, what is bound and what is refused, the
header and flags, the recipe key and option, and the tag repair gives."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import pytest

from llamawheel.building import glibc, options
from llamawheel.core.errors import RecipeError, RepairError, UsageError
from llamawheel.recipe import catalog
from llamawheel.repair import wheel_repair
from llamawheel.verify import static as verify_static
from llamawheel.wheel.distmeta import WheelName
from llamawheel.wheel.elf import ElfInfo, read_elf_file

from .helpers import RECIPES_DIR

LIBDIR = Path("/lib") / f"{platform.machine()}-linux-gnu"
HERE = glibc.parse_version((os.confstr("CS_GNU_LIBC_VERSION") or "glibc 0.0").split()[-1])
needs_libm = pytest.mark.skipif(not (LIBDIR / "libm.so.6").exists() or HERE < (2, 31),
                                reason=f"needs glibc 2.31 or newer in {LIBDIR} (exp@GLIBC_2.29, totalorder@GLIBC_2.31)")


@needs_libm
def test_the_version_table_of_the_real_libm_holds_exp_in_two_versions() -> None:
    table = {d.symbol: d for d in glibc.version_table((LIBDIR / "libm.so.6").resolve())}
    assert table["exp"].default == "GLIBC_2.29" and "GLIBC_2.2.5" in table["exp"].older
    assert table["pow"].default == "GLIBC_2.29"
    assert not any(name.startswith("GLIBC_") for name in table)  # the versions' own names are not symbols


@needs_libm
def test_symbols_are_bound_to_the_newest_version_no_later_than_the_target() -> None:
    # this machine's real tables, read as if they were a pre-2.34 root's (the split does not change libm)
    binding = glibc.binding((2, 28), LIBDIR, (2, 33))
    assert binding.needed
    assert {s: binding.bound[s] for s in ("exp", "log", "log2", "pow")} == dict.fromkeys(
        ("exp", "log", "log2", "pow"), "GLIBC_2.2.5")
    assert "expf" not in binding.bound  # GLIBC_2.27 is old enough already
    assert "totalorder" in binding.newer and "totalorder" not in binding.bound  # its old version has another ABI
    assert binding.why_newer("totalorder") == ("its version in glibc 2.28 has another ABI (2.31 passes the arguments "
                                               "by pointer)")
    # new in 2.30, no older version: not an ABI matter, although its name matches pthread_cond_*
    assert binding.why_newer("pthread_cond_clockwait") == "glibc 2.28 has no pthread_cond_clockwait"
    header = binding.header()
    assert header.count(".symver") == len(binding.bound)
    assert '__asm__(".symver exp, exp@GLIBC_2.2.5");' in header
    assert header.splitlines()[2] == "#if !defined(__CUDA_ARCH__) && !defined(__ASSEMBLER__)"  # not nvcc's device pass


def test_a_folder_without_glibc_is_refused_rather_than_binding_nothing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no glibc in .* to read symbol versions from"):
        glibc.binding((2, 28), tmp_path, (2, 31))


@needs_libm
def test_which_symbol_each_needed_version_serves_is_read_from_a_real_library() -> None:
    info = read_elf_file((LIBDIR / "libm.so.6").resolve())  # libm takes a few functions from libc
    users = {v: s for v, s in info.uses.items() if v.startswith("GLIBC_")}
    assert users and all(symbols for symbols in users.values())
    assert "GLIBC_2.2.5" in users and set(users) <= {f"GLIBC_{v}" for v in info.required["GLIBC"]}


def test_nothing_is_bound_when_the_environment_is_not_newer_than_the_target() -> None:
    binding = glibc.binding((2, 31), Path("/nonexistent"), (2, 31))
    assert not binding.needed and binding.bound == {}
    assert binding.manifest_fields()["glibc"] == {"target": "2.31", "build_env_glibc": "2.31", "bound": {},
                                                  "cxx_runtime": "the system's libstdc++"}


@pytest.mark.skipif(HERE < glibc.SPLIT, reason="this machine's glibc is older than 2.34")
def test_an_environment_past_the_libpthread_merge_cannot_target_older_systems() -> None:
    with pytest.raises(UsageError) as info:
        glibc.binding((2, 28), LIBDIR, HERE)
    assert "glibc 2.34 moved libpthread, libdl and librt into libc" in info.value.message
    assert "--build-env bullseye" in (info.value.tip or "")


def test_the_flags_reach_c_cxx_nvcc_and_the_linker() -> None:
    flags = glibc.Binding((2, 28), (2, 31)).flags("/build/.glibc/glibc-compat.h")
    assert flags["CFLAGS"] == flags["CXXFLAGS"] == "-include /build/.glibc/glibc-compat.h"
    assert flags["CUDAFLAGS"] == "-Xcompiler=-include,/build/.glibc/glibc-compat.h"
    assert flags["LDFLAGS"] == "-static-libstdc++ -Wl,--exclude-libs,libstdc++.a -Wl,--gc-sections"


@pytest.mark.parametrize("symbol", ["totalorderf64x", "pthread_cond_wait", "glob64", "sched_setaffinity"])
def test_symbols_whose_old_version_has_another_abi_are_never_bound(symbol: str) -> None:
    assert glibc.other_abi(symbol)


@pytest.mark.parametrize("symbol", ["exp", "pow", "memcpy", "globfree", "pthread_create"])
def test_other_symbols_may_be_bound(symbol: str) -> None:
    assert glibc.other_abi(symbol) is None


def test_a_bad_or_too_old_glibc_option_is_refused() -> None:
    with pytest.raises(UsageError, match=r"--glibc 'rhel8' is not a glibc version like 2.28"):
        options.resolve({"glibc": "rhel8"})
    with pytest.raises(UsageError, match=r"--glibc 2.12: older than 2.17 \(manylinux2014\)"):
        options.resolve({"glibc": "2.12"})
    assert options.resolve({"glibc": "2.17"}).glibc == "2.17"


def test_a_recipe_with_a_bad_glibc_names_the_file_and_key(tmp_path: Path) -> None:
    recipe = tmp_path / "cpu.toml"
    recipe.write_text((RECIPES_DIR / "cpu.toml").read_text())
    shutil.copytree(RECIPES_DIR / "patches", tmp_path / "patches")
    (tmp_path / "defaults.toml").write_text(
        (RECIPES_DIR / "defaults.toml").read_text().replace('glibc = "2.28"', 'glibc = "2.5"'))
    with pytest.raises(RecipeError) as info:
        catalog.load_recipe(recipe)
    assert "build.glibc" in info.value.message and "older than 2.17" in info.value.message


def test_repair_tags_a_wheel_for_its_target_and_names_what_exceeds_it() -> None:
    ok = {"libllama.so": ElfInfo(required={"GLIBC": frozenset({"2.2.5", "2.17"})},
                                 uses={"GLIBC_2.2.5": frozenset({"exp"}), "GLIBC_2.17": frozenset({"clock_gettime"})})}
    assert wheel_repair._tag(ok, (2, 28)) == "manylinux_2_28_x86_64"  # the target's tag, not the older one earned
    assert wheel_repair._tag(ok, None) == "manylinux_2_17_x86_64"
    assert wheel_repair._tag(ok, (2, 17)) == "manylinux_2_17_x86_64.manylinux2014_x86_64"  # for CentOS 7's older pip
    bad = {"libmtmd.so": ElfInfo(required={"GLIBC": frozenset({"2.2.5", "2.29"})},
                                 uses={"GLIBC_2.29": frozenset({"posix_spawn_file_actions_addchdir_np"}),
                                       "GLIBC_2.2.5": frozenset({"exp"})})}
    binding = glibc.Binding((2, 28), (2, 31), newer={"posix_spawn_file_actions_addchdir_np": "GLIBC_2.29"})
    with pytest.raises(RepairError) as info:
        wheel_repair._tag(bad, (2, 28), binding)
    assert "built for glibc 2.28 (manylinux_2_28)" in info.value.message
    assert ("libmtmd.so uses posix_spawn_file_actions_addchdir_np@GLIBC_2.29: glibc 2.28 has no "
            "posix_spawn_file_actions_addchdir_np") in info.value.message
    assert "exp" not in info.value.message


def test_verify_static_fails_a_wheel_needing_more_than_the_glibc_it_was_built_for(tmp_path: Path) -> None:
    libs = {"pkg/libmtmd.so": ElfInfo(required={"GLIBC": frozenset({"2.2.5", "2.29"})},
                                      uses={"GLIBC_2.29": frozenset({"posix_spawn_file_actions_addchdir_np"})})}
    report = verify_static.Report("pkg.whl", "1.0", 0, "a claim")
    verify_static._check_platform(report, libs, WheelName.parse("pkg-1.0-py3-none-manylinux_2_31_x86_64.whl"), (2, 28))
    glibc_check, tag_check = report.checks
    assert (glibc_check.name, not glibc_check.failed) == ("glibc 2.28", False)
    assert glibc_check.detail == ("built for glibc 2.28, but libmtmd.so uses "
                                  "posix_spawn_file_actions_addchdir_np@GLIBC_2.29")
    assert not tag_check.failed  # the tag itself is honest: manylinux_2_31
    # standalone, the target comes from the build's manifest beside the wheel
    wheel = tmp_path / "pkg-1.0-py3-none-manylinux_2_28_x86_64.whl"
    assert verify_static.built_for_glibc(wheel) is None
    wheel.with_name(wheel.name + ".json").write_text('{"glibc": {"target": "2.28"}}')
    assert verify_static.built_for_glibc(wheel) == (2, 28)
