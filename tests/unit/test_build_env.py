"""Choosing where a wheel is compiled (no root is made here: the integration tests make real ones): the recipe's
``build.env`` and ``--build-env``, the host-compiler check against the root's GCC before any download, the CPU
variants an older GCC builds, how a root is entered, and the build requirements walked with the root's Python."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamawheel import pipeline
from llamawheel.building import options, planning, root_runner
from llamawheel.core.errors import ToolchainError, UsageError
from llamawheel.recipe import catalog
from llamawheel.recipe.model import CudaMinor
from llamawheel.recipe.platforms import X86_64
from llamawheel.toolchain import buildroot, hostcc
from llamawheel.verify import static as verify_static
from llamawheel.wheel import requirements

from ..index_wheels import make_wheel
from .helpers import RECIPES_DIR

CUDA13 = catalog.load_recipe(RECIPES_DIR / "cuda-13.toml")
CPU = catalog.load_recipe(RECIPES_DIR / "cpu.toml")


def test_the_recipes_build_in_bullseye_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMAWHEEL_BUILD_ENV", raising=False)
    assert planning.plan_cpu(CPU, options.resolve({})).build_env == "bullseye"
    assert planning.plan_cpu(CPU, options.resolve({"build_env": "host"})).build_env == "host"
    monkeypatch.setenv("LLAMAWHEEL_BUILD_ENV", "trixie")
    plan = planning.plan_cuda(CUDA13, CUDA13.minors["13.0"], options.resolve({"arch": "90"}))
    assert plan.build_env == "trixie" and plan.suite is not None and plan.suite.gcc == 14


def test_an_unknown_build_env_names_the_known_ones() -> None:
    with pytest.raises(UsageError, match="--build-env buster: not a build environment") as err:
        planning.plan_cpu(CPU, options.resolve({"build_env": "buster"}))
    assert "host, bullseye, bookworm, trixie" in str(err.value.tip)


def test_the_work_folders_of_host_and_root_builds_differ() -> None:
    root = planning.plan_cpu(CPU, options.resolve({"build_env": "bullseye"}))
    host = planning.plan_cpu(CPU, options.resolve({"build_env": "host"}))
    assert pipeline.work_dir(root).name == "llama-cpp-python-cpu-bullseye"
    assert pipeline.work_dir(host).name == "llama-cpp-python-cpu"


def test_the_roots_gcc_is_checked_against_nvcc_before_anything_is_downloaded() -> None:
    minor = CudaMinor(provider="system", version="11.8", max_gcc=11)
    assert hostcc.choose(minor, root_gcc=buildroot.SUITES["bullseye"].gcc) is None  # GCC 10: accepted, no g++-N
    with pytest.raises(ToolchainError, match="accepts GCC 11 at most, but the build root's g\\+\\+ is 14"):
        hostcc.choose(minor, root_gcc=buildroot.SUITES["trixie"].gcc)


def test_gcc_10_builds_every_cpu_level_but_alderlake_and_sapphirerapids() -> None:
    old = X86_64.cpu_variants_for_gcc(10)
    assert set(X86_64.cpu_variants) - set(old) == {"alderlake", "sapphirerapids"}
    assert X86_64.cpu_variants_for_gcc(12) == X86_64.cpu_variants == X86_64.cpu_variants_for_gcc(None)
    # and verification expects what the recipe's build environment gives
    assert verify_static.Expectations.from_version("0.3.36+cpu").cpu_variants == old
    plan = planning.plan_cpu(CPU, options.resolve({"build_env": "host"}))
    host = verify_static.Expectations.for_plan(None, (), "pypi", CPU, (), plan.build_env)
    assert host.cpu_variants == X86_64.cpu_variants


def test_a_root_is_entered_read_only_with_no_network_no_host_environment_and_only_the_store_writable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAWHEEL_CACHE", str(tmp_path / "cache"))
    made: list[list[str]] = []
    monkeypatch.setattr(root_runner.proc, "stream", lambda cmd, **_: made.append(list(cmd)))
    root = buildroot.Root(tmp_path / "buildroot-bullseye", "bullseye", (), "test", 0, 0.0, "2.31", "10.2.1", "3.9")
    work = tmp_path / "cache" / "build" / "llama-cpu"
    runner = root_runner.runner_for(root, tmp_path / "house", tmp_path / "cuda", work)
    cmd, extra = runner.command(["python", "-V"], {"CMAKE_ARGS": "-DX=1"})
    assert extra is None  # everything is inside the command
    assert cmd[cmd.index("--bind") + 1:cmd.index("--bind") + 3] == [str(root.path), "/"]
    assert cmd[cmd.index("--remount-ro"):cmd.index("--remount-ro") + 2] == ["--remount-ro", "/"]
    assert "--unshare-net" in cmd and "--clearenv" in cmd and "--share-net" not in cmd
    env = {cmd[i + 1]: cmd[i + 2] for i, a in enumerate(cmd) if a == "--setenv"}
    assert env["PIP_NO_INDEX"] == "1" and env["PIP_FIND_LINKS"] == str(tmp_path / "house")
    assert env["PIP_CONFIG_FILE"] == "/dev/null"  # neither this machine's pip settings nor the root's
    assert env["PATH"].startswith(f"/opt/cuda/bin:{root_runner.BUILD_VENV}/bin:")
    assert env["CMAKE_ARGS"] == "-DX=1"
    assert cmd[-3:] == ["--", "python", "-V"]
    # pip runs in a venv of the build's own folder, made by the root's Python (the root cannot take a newer pip)
    assert runner.python == "/build/.venv/bin/python"
    assert made and made[0][-5:] == ["--", "python3", "-m", "venv", "/build/.venv"] and "--remount-ro" in made[0]
    # the build's folder and the CUDA root at fixed paths inside, whatever this machine calls them: the paths
    # compiled into the libraries are the same on every machine; this machine's paths in arguments follow them
    assert ["--bind", str(work), "/build"] == cmd[cmd.index(str(work)) - 1:cmd.index(str(work)) + 2]
    assert ["--ro-bind", str(tmp_path / "cuda"), "/opt/cuda"] == \
        cmd[cmd.index(str(tmp_path / "cuda")) - 1:cmd.index(str(tmp_path / "cuda")) + 2]
    # writable: the build's folder and the compile caches' stores; the wheelhouse and the tools read-only; nothing
    # else of the cache (the farm's tokens, the toolchains) is bound at all
    pairs = [(cmd[i], cmd[i + 1]) for i, a in enumerate(cmd[:-2]) if a in ("--bind", "--ro-bind")]
    assert pairs == [("--bind", str(root.path)), ("--bind", str(tmp_path / "cache" / "compile-cache")),
                     ("--bind", str(work)), ("--ro-bind", str(tmp_path / "house")),
                     ("--ro-bind", str(tmp_path / "cache" / "tools")), ("--ro-bind", str(tmp_path / "cuda"))]
    moved, _ = runner.command(["pip", "wheel", f"{work}/src", f"-DCUDAToolkit_ROOT={tmp_path / 'cuda'}"], {})
    assert moved[-5:] == ["--", "pip", "wheel", "/build/src", "-DCUDAToolkit_ROOT=/opt/cuda"]
    assert root_runner.Runner().command(["python", "-V"], {"A": "1"}) == (["python", "-V"], {"A": "1"})


def test_the_build_requirements_are_walked_with_the_roots_python(tmp_path: Path) -> None:
    """pip judges markers by the Python it runs on: for Python 3.9 scikit-build-core also needs exceptiongroup."""
    make_wheel(tmp_path, name="scikit_build_core", version="1.1.2", platform="any",
               requires=('exceptiongroup>=1.0 ; python_version < "3.11"', "packaging>=23"), extras=(),
               package="scikit_build_core")
    make_wheel(tmp_path, name="packaging", version="26.0", platform="any", requires=(), extras=(), package="packaging")
    wanted = ["scikit-build-core>=0.9.2"]
    tags = requirements.supported_tags("3.9", ["manylinux_2_31_x86_64"])
    old = requirements.unmet_requirements(tmp_path, wanted, (), requirements.target_environment("3.9", "x86_64"), tags)
    new = requirements.unmet_requirements(tmp_path, wanted, (), requirements.target_environment("3.12", "x86_64"),
                                          requirements.supported_tags("3.12", ["manylinux_2_31_x86_64"]))
    assert old == ["exceptiongroup>=1.0"] and new == []


def test_a_roots_facts_come_from_its_dpkg_database(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: libc6\nVersion: 2.31-13+deb11u11\n\nPackage: gcc-10\nVersion: 10.2.1-6\n")
    (tmp_path / "usr/bin").mkdir(parents=True)
    for name in ("gcc-10", "python3.9", "python3.9-config"):
        (tmp_path / "usr/bin" / name).touch()
    (tmp_path / buildroot.ROOT_MARKER).write_text(json.dumps({}))
    assert buildroot._facts(tmp_path) == {"glibc": "2.31", "gcc": "10.2.1", "python": "3.9"}


def test_without_bubblewrap_a_root_build_stops_before_any_download(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    plan = planning.plan_cpu(CPU, options.resolve({"build_env": "bullseye", "out": tmp_path / "out"}))
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with nothing on it: no bwrap, no mmdebstrap
    monkeypatch.setenv("LLAMAWHEEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ToolchainError, match="bubblewrap is not installed") as err:
        pipeline.run(plan)
    assert "apt-get install bubblewrap" in str(err.value.tip) and "--build-env host" in str(err.value.tip)
    assert not (tmp_path / "cache" / "sdists").exists()  # nothing was fetched
