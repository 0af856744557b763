"""A small CUDA package that calls cuBLAS, through the same build -> repair -> verify path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from llamawheel.building import cache, cache_tools
from llamawheel.core import paths
from llamawheel.recipe.variant import flags_label
from llamawheel.wheel.elf import read_elf

from .conftest import FIXTURE, llamawheel


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_build_ends_with_a_verified_wheel(probe_wheel: tuple[Path, str]) -> None:
    wheel, output = probe_wheel
    # built for the recipe's glibc 2.28 (through nvcc too: its host compiles get the binding header)
    assert wheel.name == "cublas_probe-0.1.0+cu130.sm90-py3-none-manylinux_2_28_x86_64.whl"
    assert "result: PASS" in output
    assert "PASS  machine code sm_90" in output
    assert "compiling [" in output  # progress was shown


def test_repaired_wheel_holds_one_library_and_nothing_outside_the_package(probe_wheel: tuple[Path, str]) -> None:
    wheel, _ = probe_wheel
    names = _names(wheel)
    libs = [n for n in names if ".so" in n]
    assert libs == ["cublas_probe/lib/libcublasprobe.so"]
    assert not [n for n in names if n.startswith(("lib/", "include/"))]
    with zipfile.ZipFile(wheel) as zf:
        info = read_elf(zf.read(libs[0]))
        meta = zf.read("cublas_probe-0.1.0+cu130.sm90.dist-info/METADATA").decode()
    assert info.soname == "libcublasprobe.so"
    assert {"libcudart.so.13", "libcublas.so.13"} <= set(info.needed)
    assert info.runpath == ["$ORIGIN", "$ORIGIN/../../nvidia/cu13/lib"]
    assert "Requires-Dist: nvidia-cublas>=13.0,<14" in meta


def test_manifest_says_how_it_was_built(probe_wheel: tuple[Path, str]) -> None:
    wheel, _ = probe_wheel
    manifest = json.loads(wheel.with_name(wheel.name + ".json").read_text())
    assert manifest["cuda"]["version"] == "13.0"
    assert manifest["cuda"]["nvcc"].startswith("13.0")
    assert manifest["architectures"] == ["90-real"]
    assert "-DCMAKE_CUDA_ARCHITECTURES=90-real" in manifest["cmake_args"]
    assert manifest["repair"]["plain_wheel_size"] > manifest["size"]
    assert manifest["verify_static"]["ok"] is True
    # compiled in the recipes' Debian 11 root, from a wheelhouse fetched through the mirror profile
    env = manifest["build_env"]
    assert (env["name"], env["glibc"], env["python"]) == ("bullseye", "2.31", "3.9") and env["gcc"].startswith("10.")
    assert manifest["tools"]["gcc"].startswith("gcc (Debian 10.")
    assert manifest["mirror"]["name"] == "default"


def test_manifest_lists_every_file_fetched_for_the_build(probe_wheel: tuple[Path, str]) -> None:
    wheel, _ = probe_wheel
    fetched = json.loads(wheel.with_name(wheel.name + ".json").read_text())["fetched"]
    # NVIDIA's compiler wheels, the root's Debian packages, the build requirements pip was given
    assert set(fetched) == {"toolchain", "build_root", "build_requirements"}
    names = {stage: [f["file"] for f in files] for stage, files in fetched.items()}
    assert any(n.startswith("nvidia_cuda_nvcc") for n in names["toolchain"])
    assert any(n.startswith("libc6_2.31") for n in names["build_root"])  # the essential packages too
    assert any(n.startswith("gcc-10_") for n in names["build_root"])
    assert any(n.startswith("scikit_build_core-") for n in names["build_requirements"])
    for stage, files in fetched.items():
        for f in files:
            assert f["url"].startswith(("https://", "http://", "file://")), (stage, f)
            assert f["url"].rsplit("/", 1)[-1] == f["file"], (stage, f)
            assert len(f["sha256"]) == 64 and f["size"] > 0, (stage, f)


def test_build_env_host_compiles_on_this_machine(cuda_root: Path, tmp_path: Path) -> None:
    result = llamawheel("build", "13.0", "--arch", "90", "--source", str(FIXTURE), "--out", str(tmp_path),
                        "--build-env", "host")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "building on this machine" in result.stderr
    (wheel,) = tmp_path.glob("*.whl")
    assert json.loads(wheel.with_name(wheel.name + ".json").read_text())["build_env"] == {"name": "host"}


def test_installed_wheel_finds_cuda_libraries_from_nvidia_wheels(probe_wheel: tuple[Path, str], tmp_path: Path) -> None:
    """Install into a fresh venv with its Requires-Dist; the library must load with no CUDA toolkit.

    No GPU here, so the cuBLAS call itself cannot run; loading proves RUNPATH and NEEDED are right.
    """
    wheel, _ = probe_wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=1200)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH")}
    code = (
        "import cublas_probe, pathlib\n"
        "maps = pathlib.Path('/proc/self/maps').read_text()\n"
        "print([l.split()[-1] for l in maps.splitlines() if 'libcublas.so' in l][0])\n"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "/site-packages/nvidia/cu13/lib/libcublas.so.13" in out.stdout


def test_rebuild_after_deleting_the_tree_is_served_by_the_compile_cache(probe_wheel: tuple[Path, str],
                                                                        tmp_path: Path) -> None:
    shutil.rmtree(paths.builds_dir() / "cublas_probe-cu130.sm90", ignore_errors=True)
    result = llamawheel("build", "13.0", "--arch", "90", "--source", str(FIXTURE), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("*.whl")
    manifest = json.loads(wheel.with_name(wheel.name + ".json").read_text())
    # the default compile cache (ccache) serves the probe's one nvcc compile from the local store
    cc = manifest["build"]["compile_cache"]
    assert cc["tool"] == cache_tools.PINS[cache.DEFAULT].label and cc["backend"] == "local", cc
    assert cc["hits"] >= 1 and cc["misses"] == 0, cc


def test_cpu_only_wheel_labelled_cuda_is_refused(tmp_path: Path) -> None:
    built = llamawheel("build", "13.0", "--arch", "90", "--source", str(FIXTURE), "--out", str(tmp_path),
                       "--no-verify", env={"CMAKE_ARGS": "-DPROBE_CUDA=OFF"})
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*+cu130.sm90.cm*-*.whl")  # the extra CMake flag shows in the label
    assert f"+cu130.sm90.{flags_label(['-DPROBE_CUDA=OFF'])}-" in wheel.name
    result = llamawheel("verify-static", str(wheel))
    assert result.returncode == 9
    assert "this wheel is CPU-only" in result.stdout
    assert "ERROR" in result.stderr and "CPU-only" in result.stderr


def test_wheel_without_code_for_the_asked_architecture_is_refused(probe_wheel: tuple[Path, str]) -> None:
    wheel, _ = probe_wheel
    result = llamawheel("verify-static", str(wheel), "--arch", "86")
    assert result.returncode == 9
    assert "FAIL  machine code sm_86" in result.stdout
    assert "holds SASS for sm_90 only" in result.stdout


def test_system_runtime_mode_requires_no_nvidia_wheels(cuda_root: Path, tmp_path: Path) -> None:
    result = llamawheel("build", "13.0", "--arch", "90", "--runtime", "system", "--source", str(FIXTURE),
                        "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("*.whl")
    assert "+cu130.sm90.sys-" in wheel.name
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read("cublas_probe-0.1.0+cu130.sm90.sys.dist-info/METADATA").decode()
        info = read_elf(zf.read("cublas_probe/lib/libcublasprobe.so"))
    assert "nvidia-" not in meta
    assert info.runpath == ["$ORIGIN"]
    assert "PASS  runtime from the system" in result.stdout
