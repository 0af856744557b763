"""The target platform as one choice (`llamawheel.recipe.platforms`): the option and the recipe key, what an aarch64
build asks of the build root, CMake and repair, and the errors a user sees. Nothing is built or run here: the
integration tests (test_aarch64) cross-compile and run the wheel under QEMU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llamawheel import pipeline
from llamawheel.building import options, planning
from llamawheel.core.errors import RecipeError, UsageError
from llamawheel.recipe import catalog, platforms
from llamawheel.recipe.platforms import AARCH64, X86_64
from llamawheel.toolchain import buildroot
from llamawheel.verify import static as verify_static

from .helpers import RECIPES_DIR

CPU = catalog.load_recipe(RECIPES_DIR / "cpu.toml")


def test_a_platform_is_named_as_wheel_tags_name_it_and_debians_names_are_taken_too() -> None:
    assert platforms.get("aarch64") is AARCH64 and platforms.get("arm64") is AARCH64
    assert platforms.get("amd64") is X86_64
    with pytest.raises(UsageError, match="--platform arm46: not a platform llamawheel builds for") as err:
        platforms.get("arm46")
    assert err.value.tip == "choose one of x86_64, aarch64"
    assert platforms.of_tag("manylinux_2_28_aarch64") is AARCH64
    assert platforms.of_tag("manylinux_2_17_x86_64.manylinux2014_x86_64") is X86_64
    assert platforms.of_tag("any") is None


def test_an_aarch64_build_is_cross_compiled_with_the_roots_gcc_10_and_finds_only_arm_libraries() -> None:
    assert X86_64.native and not AARCH64.native  # these tests run on x86-64, as llamawheel builds
    assert X86_64.cmake_args() == () and X86_64.cross_packages == ()
    assert AARCH64.cross_packages == ("g++-aarch64-linux-gnu", "libc6-dev-arm64-cross")
    args = AARCH64.cmake_args()
    assert "-DCMAKE_SYSTEM_PROCESSOR=aarch64" in args and "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++" in args
    assert "-DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY" in args
    assert AARCH64.libdirs() == ("usr/aarch64-linux-gnu/lib",)  # the glibc binding and repair look there
    assert X86_64.libdirs()[0] == "lib/x86_64-linux-gnu"


def test_gcc_10_builds_six_of_the_eight_arm_levels() -> None:
    assert AARCH64.cpu_variants_for_gcc(10) == ("armv8.0_1", "armv8.2_1", "armv8.2_2", "armv8.2_3", "armv8.6_1",
                                                "armv8.6_2")
    assert AARCH64.cpu_variants_for_gcc(None) == AARCH64.cpu_variants
    expect = verify_static.Expectations.from_version("0.3.36+cpu", target=AARCH64)
    assert expect.cpu_variants == AARCH64.cpu_variants_for_gcc(10) and expect.target is AARCH64


def test_the_option_overrides_the_recipe_and_the_plan_adds_the_cross_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMAWHEEL_PLATFORM", raising=False)
    monkeypatch.delenv("LLAMAWHEEL_BUILD_ENV", raising=False)
    assert planning.plan_cpu(CPU, options.resolve({})).platform is X86_64
    plan = planning.plan_cpu(CPU, options.resolve({"platform": "arm64"}))
    assert plan.options.platform == "aarch64" and plan.platform is AARCH64
    assert "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc" in planning.cmake_args_for(plan, None)
    assert plan.patch_files[-1].name == "arm-cpu-variants.patch" and plan.patch_files[:-1] == CPU.patch_files
    assert plan.manifest_fields()["platform"] == "aarch64"
    assert pipeline.work_dir(plan).name == "llama-cpp-python-cpu-bullseye-aarch64"
    assert plan.describe().endswith("for the CPU on Arm 64-bit (aarch64)")
    # the wheel of each platform has its own fingerprint: the aarch64 one includes the platform's patch
    assert catalog.fingerprint(CPU, X86_64) == catalog.fingerprint(CPU) != catalog.fingerprint(CPU, AARCH64)
    monkeypatch.setenv("LLAMAWHEEL_PLATFORM", "aarch64")
    assert planning.plan_cpu(CPU, options.resolve({})).platform is AARCH64


def test_another_machines_wheel_is_not_built_on_the_host_as_it_is() -> None:
    with pytest.raises(UsageError, match="cross-compiled in a Debian build root, not on this x86-64 machine"):
        planning.plan_cpu(CPU, options.resolve({"platform": "aarch64", "build_env": "host"}))


def test_a_recipes_platform_is_checked_with_a_close_match(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "cpu.toml").write_text('kind = "cpu"\n[llama-cpp-python]\nversion = "0.3.36"\n'
                                     f'sha256 = "{"0" * 64}"\n[build]\nplatform = "aarch46"\n')
    with pytest.raises(RecipeError, match=r"build\.platform") as err:
        catalog.load_recipe(folder / "cpu.toml")
    assert 'did you mean "aarch64"' in str(err.value)


@pytest.mark.skipif(shutil.which("qemu-aarch64") is None, reason="needs qemu-user (apt-get install qemu-user)")
def test_a_foreign_root_runs_its_programs_under_qemu_with_the_network_cut(tmp_path: Path) -> None:
    root = buildroot.Root(tmp_path / "arm64", "bullseye", (), "test", 0, 0.0, "2.31", "", "3.9", platform="aarch64")
    cmd = root.emulated(["/usr/bin/python3.9", "-V"], cpu="neoverse-n1", env={"A": "1"})
    qemu = cmd.index("--") + 1
    assert cmd[qemu].endswith("qemu-aarch64") and cmd[qemu + 1:qemu + 5] == ["-cpu", "neoverse-n1", "-L",
                                                                             str(root.path)]
    assert cmd[qemu + 5:] == [str(root.path / "usr/bin/python3.9"), "-V"]
    assert "--unshare-net" in cmd and "--clearenv" in cmd and cmd[cmd.index("--setenv") + 1] == "HOME"


CUDA13 = catalog.load_recipe(RECIPES_DIR / "cuda-13.toml")
CUDA12 = catalog.load_recipe(RECIPES_DIR / "cuda-12.toml")


def test_cuda_for_arm_needs_the_minors_aarch64_runtime_wheels_and_names_the_minors_that_have_them() -> None:
    plan = planning.plan_cuda(CUDA13, CUDA13.minors["13.0"], options.resolve({"arch": "grace-hopper,dgx-spark",
                                                                               "platform": "aarch64"}))
    assert [t.sm for t in plan.targets] == ["90", "121"]
    args = planning.cmake_args_for(plan, None)  # no CUDA root: only the CPU side
    assert "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++" in args
    assert plan.platform.cuda_cmake_args() == ("-DCMAKE_CUDA_HOST_COMPILER=aarch64-linux-gnu-g++",
                                               "-DCMAKE_CUDA_FLAGS_INIT=--target-directory=sbsa-linux")
    assert "aarch64 wheels" in plan.target_needs()
    assert CUDA13.minors["13.0"].pins_for("aarch64") == ("nvidia-cuda-runtime==13.0.96", "nvidia-cublas==13.10.0.20")
    assert CUDA13.minors["13.0"].pins_for("x86_64") == CUDA13.minors["13.0"].runtime_pins
    with pytest.raises(UsageError, match=r"CUDA 13\.1's recipe lists no aarch64 runtime wheels") as err:
        planning.plan_cuda(CUDA13, CUDA13.minors["13.1"], options.resolve({"arch": "90", "platform": "aarch64"}))
    assert err.value.tip == "build a CUDA version that lists them: 13.0"


def test_jetson_orin_is_built_with_cuda_12_and_jetpacks_own_libraries() -> None:
    with pytest.raises(UsageError, match="Orin runs JetPack 6, whose driver is CUDA 12") as err:
        planning.plan_cuda(CUDA13, CUDA13.minors["13.0"], options.resolve({"arch": "orin", "platform": "aarch64"}))
    assert "--runtime system" in str(err.value.tip)
    with pytest.raises(UsageError, match="NVIDIA's PyPI runtime wheels are built for Arm servers"):
        planning.plan_cuda(CUDA12, CUDA12.minors["12.4"], options.resolve({"arch": "orin", "platform": "aarch64"}))
    plan = planning.plan_cuda(CUDA12, CUDA12.minors["12.4"], options.resolve({"arch": "orin", "platform": "aarch64",
                                                                              "runtime": "system"}))
    assert plan.local_version == "cu124.sm87.sys"
    assert plan.manifest_fields()["target_needs"] == (
        "the NVIDIA driver and CUDA 12's libcudart.so.12 and libcublas.so.12, of CUDA 12.4 or newer, on the "
        "loader's path (Jetson Orin: JetPack 6.1 or newer, whose CUDA is 12.6)")
