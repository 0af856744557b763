"""Planning a build (no toolchain, no compile): the variant label, the CMake flags, the
source pin, and how verification reads the label back."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamawheel.building import options, planning, timings
from llamawheel.building.cache_stats import Stats
from llamawheel.core.errors import UsageError
from llamawheel.recipe import archs, catalog
from llamawheel.toolchain import CudaRoot
from llamawheel.verify import static as verify_static

from .helpers import RECIPES_DIR, ROOT

CUDA13 = catalog.load_recipe(RECIPES_DIR / "cuda-13.toml")
CPU = catalog.load_recipe(RECIPES_DIR / "cpu.toml")


def plan_cuda(minor: str = "13.0", **cli: object) -> planning.Plan:
    return planning.plan_cuda(CUDA13, CUDA13.minors[minor], options.resolve(cli))


def cuda_root(tmp_path: Path) -> CudaRoot:
    return CudaRoot(tmp_path / "cuda-13.0", "13.0", "pypi", "test", "", 0, 0)


def test_without_arch_or_gpu_the_plan_is_the_recipes_default_list(capsys: pytest.CaptureFixture[str]) -> None:
    """The unit tests' conftest makes detection answer "no GPU"."""
    plan = plan_cuda()
    assert plan.targets == CUDA13.default_targets()
    assert [t.sm for t in plan.targets] == ["75", "80", "86", "89", "90", "100", "120"]
    err = capsys.readouterr().err
    assert "--arch not given and no GPU visible: building the recipe's default list, 7 architectures (" in err
    assert "pass --arch 86 (say) to build for one GPU" in err


def test_without_arch_the_plan_is_every_gpu_on_this_machine(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(archs, "detect_native", lambda: ["86", "90"])
    plan = plan_cuda()
    assert plan.targets == (archs.ArchTarget("86"), archs.ArchTarget("90"))
    assert plan.local_version == "cu130.sm86.sm90"
    assert "--arch not given: building for the GPU(s) on this machine: 86, 90" in capsys.readouterr().err


def test_arch_wins_over_the_gpu_on_this_machine(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(archs, "detect_native", lambda: ["89"])
    assert plan_cuda(arch="86").targets == (archs.ArchTarget("86"),)
    assert plan_cuda(arch="default").targets == CUDA13.default_targets()
    assert "--arch not given" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("cli", "label"),
    [
        ({}, "cu130"),
        ({"arch": "default"}, "cu130"),
        ({"arch": "86"}, "cu130.sm86"),
        ({"arch": "86", "runtime": "system"}, "cu130.sm86.sys"),
        ({"runtime": "system"}, "cu130.sys"),
        ({"arch": "89,90+ptx"}, "cu130.sm89.sm90.ptx90"),
        ({"arch": "86-virtual"}, "cu130.ptx86"),
    ],
)
def test_local_version(cli: dict[str, object], label: str) -> None:
    assert plan_cuda(**cli).local_version == label


def test_local_version_of_another_minor() -> None:
    assert plan_cuda("13.2", arch="86").local_version == "cu132.sm86"


def test_local_version_of_the_gpu_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archs, "detect_native", lambda: ["89"])
    assert plan_cuda().local_version == "cu130.sm89"


def test_cpu_plan() -> None:
    plan = planning.plan_cpu(CPU, options.resolve({}))
    assert plan.local_version == "cpu"
    assert plan.targets == ()
    assert plan.describe() == f"llama-cpp-python {CPU.llama_cpp_python.version} for the CPU"


def test_describe_names_version_and_archs() -> None:
    assert plan_cuda(arch="86").describe() == (
        f"llama-cpp-python {CUDA13.llama_cpp_python.version} for CUDA 13.0, sm_86"
    )


def test_plan_uses_the_chosen_mirror() -> None:
    assert plan_cuda(mirror="tsinghua").mirror.name == "tsinghua"


def test_cmake_args_for_a_cuda_plan(tmp_path: Path) -> None:
    root = cuda_root(tmp_path)
    args = planning.cmake_args_for(plan_cuda(arch="86"), root)
    assert args[: len(CUDA13.cmake_args)] == list(CUDA13.cmake_args)
    assert "-DGGML_CUDA=ON" in args
    assert f"-DCMAKE_CUDA_COMPILER={tmp_path}/cuda-13.0/bin/nvcc" in args
    assert f"-DCUDAToolkit_ROOT={tmp_path}/cuda-13.0" in args
    assert args[-1] == "-DCMAKE_CUDA_ARCHITECTURES=86-real"


def test_cmake_args_for_the_default_archs(tmp_path: Path) -> None:
    args = planning.cmake_args_for(plan_cuda(), cuda_root(tmp_path))
    assert "-DCMAKE_CUDA_ARCHITECTURES=75-real;80-real;86-real;89-real;90-real;100-real;120" in args


def test_user_cmake_args_come_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA_FORCE_MMQ=ON  -DEXTRA='two words'")
    args = planning.cmake_args_for(plan_cuda(arch="86"), cuda_root(tmp_path))
    assert args[-2:] == ["-DGGML_CUDA_FORCE_MMQ=ON", "-DEXTRA=two words"]
    assert "-DCMAKE_CUDA_ARCHITECTURES=86-real" in args[:-2]


def test_cmake_args_for_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_AVX512=ON")
    args = planning.cmake_args_for(planning.plan_cpu(CPU, options.resolve({})), None)
    assert args == [*CPU.cmake_args, "-DGGML_AVX512=ON"]
    assert not any("CUDA" in a for a in args)


def test_builds_with_other_cmake_flags_get_other_names(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = planning.plan_cpu(CPU, options.resolve({})).local_version
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_NATIVE=ON")
    native = planning.plan_cpu(CPU, options.resolve({})).local_version
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_NATIVE=ON -DGGML_AVX512=ON")
    both = planning.plan_cpu(CPU, options.resolve({})).local_version
    assert plain == "cpu"
    assert native.startswith("cpu.cm") and both.startswith("cpu.cm") and native != both
    assert plan_cuda(arch="86").local_version.startswith("cu130.sm86.cm")


def test_source_is_the_recipe_pin_by_default() -> None:
    assert planning._source(CUDA13, options.resolve({})) == CUDA13.llama_cpp_python
    pinned = CUDA13.llama_cpp_python.version
    assert planning._source(CUDA13, options.resolve({"llama_cpp_python": pinned})) == CUDA13.llama_cpp_python


def test_unpinned_version_needs_a_sha256() -> None:
    with pytest.raises(UsageError) as info:
        planning._source(CUDA13, options.resolve({"llama_cpp_python": "0.3.1"}))
    assert "llama-cpp-python 0.3.1 is not pinned by cuda-13.toml" in info.value.message
    assert info.value.tip is not None
    assert "--sdist-sha256" in info.value.tip
    assert "llama_cpp_python-0.3.1.tar.gz" in info.value.tip


def test_unpinned_version_with_a_sha256() -> None:
    sha = "AB" * 32
    source = planning._source(CUDA13, options.resolve({"llama_cpp_python": "0.3.1", "sdist_sha256": sha}))
    assert (source.name, source.version, source.sha256) == ("llama-cpp-python", "0.3.1", sha.lower())


def test_local_source_tree(tmp_path: Path) -> None:
    fixture = ROOT / "tests" / "fixtures" / "cublas_probe"
    source = planning._source(CUDA13, options.resolve({"source": fixture}))
    assert (source.name, source.version) == ("cublas_probe", "0.1.0")
    with pytest.raises(UsageError, match=r"no pyproject\.toml there"):
        planning._source(CUDA13, options.resolve({"source": tmp_path}))


def test_estimate_grows_with_architectures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAWHEEL_CACHE", str(tmp_path))
    costs = timings.costs("bullseye")
    one = costs.estimate("13.0", plan_cuda(arch="86").targets, 2)
    default = costs.estimate("13.0", plan_cuda().targets, 2)
    assert one < default
    assert costs.estimate("13.0", plan_cuda(arch="86").targets, 4) == one / 2


def test_estimates_come_from_this_machines_cold_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAWHEEL_CACHE", str(tmp_path))
    sm90 = plan_cuda(arch="90").targets
    two = plan_cuda(arch="86,90").targets
    assert timings.costs("bullseye") == timings.BUILTIN
    warm = Stats("sccache", hits=500, misses=10)
    assert not timings.record("13.0", sm90, 2, 120.0, "bullseye", warm)  # warm: not kept
    farmed = Stats("sccache", hits=0, misses=500, remote_compiles=480)
    assert not timings.record("13.0", sm90, 2, 300.0, "bullseye", farmed)  # the farm's time, not this machine's
    assert timings.record(None, (), 2, 600.0, "bullseye", Stats("ccache", hits=0, misses=300))
    assert timings.record("13.0", sm90, 4, 750.0, "bullseye", Stats("sccache", hits=3, misses=500))
    costs = timings.costs("bullseye")
    assert costs.cpu_part == 600.0
    assert "from 2 cold build(s) measured on this machine" in costs.source
    # one architecture measured: 900 s of CUDA code, split as the built-in costs split it
    builtin = timings.BUILTIN.cuda[""]
    assert costs.estimate("13.0", sm90, 2) == pytest.approx(600.0 + 900.0)
    assert costs.estimate("13.0", two, 2) == pytest.approx(600.0 + 900.0 * builtin.seconds(2) / builtin.seconds(1))
    assert costs.estimate("12.4", two, 2) == costs.estimate("13.0", two, 2)  # an unmeasured minor: the latest one's
    # a two-architecture build (no compile cache: cold by definition) gives the line through both
    assert timings.record("13.0", two, 2, 2000.0, "bullseye", None)
    costs = timings.costs("bullseye")
    assert costs.cuda["13.0"] == timings.CudaCost(fixed=400.0, per_arch=500.0)  # 900 s for one, 1400 s for two
    assert costs.estimate("13.0", plan_cuda(arch="75,86,90").targets, 2) == pytest.approx(600.0 + 400.0 + 3 * 500.0)
    assert timings.costs("host") == timings.BUILTIN


# verification reads the claim back from the label a plan gives the wheel


def test_expectations_from_a_full_label() -> None:
    expect = verify_static.Expectations.from_version("0.3.36+cu130.sm86.ptx86.sys")
    assert expect.cuda_major == 13
    assert expect.targets == (archs.ArchTarget("86", sass=True, ptx=True),)
    assert expect.runtime == "system"
    assert expect.requires == ()  # the system runtime needs no NVIDIA wheels


def test_expectations_of_the_default_label() -> None:
    expect = verify_static.Expectations.from_version("0.3.36+cu130")
    assert expect.cuda_major == 13
    assert expect.targets == CUDA13.default_targets()
    assert expect.runtime == "pypi"
    assert expect.runtime_rpath == CUDA13.runtime_rpath
    assert expect.requires == CUDA13.minors["13.0"].runtime_requires


def test_expectations_of_a_cpu_label() -> None:
    assert verify_static.Expectations.from_version("0.3.36+cpu").cuda_major is None


@pytest.mark.parametrize("version", ["0.3.36", "0.3.36+"])
def test_expectations_without_a_label(version: str) -> None:
    with pytest.raises(UsageError) as info:
        verify_static.Expectations.from_version(version)
    assert "has no local version label" in info.value.message
    assert info.value.tip is not None and "--cuda" in info.value.tip


def test_expectations_of_an_unknown_label() -> None:
    with pytest.raises(UsageError, match="'rocm60' is neither cpu nor cuXY"):
        verify_static.Expectations.from_version("0.3.36+rocm60")


@pytest.mark.parametrize(
    "cli",
    [{}, {"arch": "86"}, {"arch": "86-virtual"}, {"arch": "89,90+ptx", "runtime": "system"}, {"arch": "hopper"}],
    ids=["default", "sm86", "ptx86", "sys", "hopper"],
)
def test_label_round_trips_through_verification(cli: dict[str, object]) -> None:
    plan = plan_cuda(**cli)
    expect = verify_static.Expectations.from_version(f"{plan.source.version}+{plan.local_version}")
    assert expect == verify_static.Expectations.for_plan(plan.minor, plan.targets, plan.options.runtime, plan.recipe)
    assert plan.glibc == (2, 28)  # the recipe's, built in the Debian 11 root (its manifest records it)


def test_the_glibc_target_is_the_option_else_the_recipe_in_a_root_else_none_on_the_host() -> None:
    assert plan_cuda(glibc="2.17").glibc == (2, 17)
    assert plan_cuda(build_env="host").glibc is None  # this machine as it is
    assert plan_cuda(build_env="host", glibc="2.36").glibc == (2, 36)
    assert plan_cuda(build_env="trixie").glibc is None  # past glibc 2.34's merge: the recipe's 2.28 cannot apply
    with pytest.raises(UsageError, match=r"glibc 2\.41 cannot build for glibc 2\.28: glibc 2\.34 moved libpthread"):
        plan_cuda(build_env="trixie", glibc="2.28")  # asked for: refused before anything is fetched


def test_a_second_build_of_the_same_variant_waits_for_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two builds of one variant share a work folder (they unpack and compile there): the second waits. The
    first is stood for by holding its lock; `_run` (the real steps) is replaced by a recorder."""
    import threading
    import time

    from llamawheel import pipeline
    from llamawheel.core import fileio
    from llamawheel.pipeline import steps

    monkeypatch.setenv("LLAMAWHEEL_CACHE", str(tmp_path / "cache"))
    plan = planning.plan_cpu(CPU, options.resolve({"out": tmp_path / "out"}))
    ran: list[float] = []
    monkeypatch.setattr(steps, "_run", lambda plan, work: ran.append(time.monotonic()) or work / "x.whl")
    with fileio.locked(pipeline.work_dir(plan)):
        second = threading.Thread(target=pipeline.run, args=(plan,))
        second.start()
        time.sleep(0.5)
        assert ran == [], "the second build started while the first still held the folder"
        released = time.monotonic()
    second.join(timeout=10)
    assert len(ran) == 1 and ran[0] >= released
    assert "another build of cpu is running on this machine" in capsys.readouterr().err


def test_the_folder_checked_is_the_folder_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``LLAMAWHEEL_OUT=~/wheels`` (a shell does not expand ~ inside a variable): the folder proven writable when
    planning and the folder the wheel goes to are one, the home's."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LLAMAWHEEL_OUT", "~/wheels")
    plan = planning.plan_cpu(CPU, options.resolve({}))
    assert plan.output_dir == tmp_path / "wheels"
    assert (tmp_path / "wheels").is_dir()
