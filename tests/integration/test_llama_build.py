"""The real thing: llama-cpp-python for CUDA 13.0, sm_90 (about an hour cold on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import llamawheel

pytestmark = pytest.mark.slow


def test_llama_cpp_python_cuda13_sm90_wheel(tmp_path: Path) -> None:
    result = llamawheel("build", "13", "--arch", "90", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    (wheel,) = tmp_path.glob("llama_cpp_python-*+cu130.sm90-py3-none-manylinux_*_x86_64.whl")
    assert "result: PASS" in result.stdout
    assert wheel.stat().st_size < 40_000_000  # 29.6 MB; the plain build is 149 MB (the 12 CPU levels add 6 MB)
    manifest = json.loads(wheel.with_name(wheel.name + ".json").read_text())
    assert manifest["source"]["sha256"] == "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
    libs = [Path(p).name for p in manifest["repair"]["libraries"]]
    assert "libggml-cuda.so" in libs and "libllama.so" in libs
    assert "libggml-cpu-sse42.so" in libs and "libggml-cpu-haswell.so" in libs and "libggml-cpu-x64.so" in libs
    assert [p["file"] for p in manifest["source"]["patches"]] == ["stream-incremental.patch", "backend-modules.patch",
                                                                   "cpu-variants-compiler.patch",
                                                                   "subprocess-glibc-2.28.patch"]
    assert wheel.name.endswith("-py3-none-manylinux_2_28_x86_64.whl")  # built in the Debian 11 root, for glibc 2.28
    assert manifest["build_env"]["name"] == "bullseye"
    assert len(libs) == len(set(libs))


def test_llama_cpp_python_cuda13_for_grace_hopper_and_dgx_spark_on_arm(tmp_path: Path) -> None:
    """The Arm command of docs/cuda.md: CUDA 13.0, sm_90 + sm_121, cross-compiled for aarch64 in the bullseye root
    (about 40 minutes cold on 2 cores, the CPU part from the compile cache of the aarch64 CPU wheel)."""
    result = llamawheel("build", "13", "--arch", "grace-hopper,dgx-spark", "--platform", "aarch64", "--out",
                        str(tmp_path), timeout=7200)
    assert result.returncode == 0, result.stderr[-4000:]
    (wheel,) = tmp_path.glob("llama_cpp_python-0.3.36+cu130.sm90.sm121-py3-none-manylinux_2_28_aarch64.whl")
    assert "result: PASS" in result.stdout
    for check in ("PASS  machine", "EM_AARCH64", "PASS  machine code sm_90", "PASS  machine code sm_121",
                  "armv8.0_1", "armv8.6_2", "needs libcublas.so.13"):
        assert check in result.stdout, check
    manifest = json.loads(wheel.with_name(wheel.name + ".json").read_text())
    assert manifest["platform"] == "aarch64" and manifest["glibc"]["target"] == "2.28"
    assert [p["file"] for p in manifest["source"]["patches"]][-1] == "arm-cpu-variants.patch"
    # linked against NVIDIA's aarch64 cuBLAS, recorded with the toolchain's downloads
    assert any(f["file"].startswith("nvidia_cublas-13.10.0.20-") and f["file"].endswith("_aarch64.whl")
               for f in manifest["fetched"]["toolchain"])
