"""The pypi provider, for real: NVIDIA's wheels through pip, a root nvcc accepts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from llamawheel.wheel.elf import read_elf_file

from .conftest import llamawheel


def test_root_has_the_layout_cmake_and_nvcc_expect(cuda_root: Path) -> None:
    out = subprocess.run([str(cuda_root / "bin" / "nvcc"), "--version"], capture_output=True, text=True).stdout
    assert "release 13.0" in out
    for rel in ("lib64/libcudart.so", "targets/x86_64-linux/lib/libcublas.so",
                "targets/x86_64-linux/include/cuda_runtime.h", "nvvm/bin/cicc"):
        assert (cuda_root / rel).exists(), rel
    marker = json.loads((cuda_root / "llamawheel-toolchain.json").read_text())
    assert marker["version"] == "13.0"
    assert marker["download_bytes"] > 100_000_000  # nvcc + nvvm + cuBLAS wheels


def test_second_provision_reuses_the_root(cuda_root: Path) -> None:
    start = time.monotonic()
    result = llamawheel("toolchain", "13.0")
    assert result.returncode == 0
    assert "reusing" in result.stderr
    assert Path(result.stdout.strip()) == cuda_root
    assert time.monotonic() - start < 60


def test_nvcc_output_holds_the_requested_code(cuda_root: Path, tmp_path: Path) -> None:
    """Compile real device code and read its fat binary back with our own parser."""
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k(float* a) { a[threadIdx.x] *= 2.0f; }\n")
    obj = tmp_path / "k.o"
    subprocess.run(
        [str(cuda_root / "bin" / "nvcc"), "-c", str(src), "-o", str(obj),
         "-gencode", "arch=compute_86,code=sm_86", "-gencode", "arch=compute_90,code=compute_90"],
        check=True, capture_output=True,
    )
    info = read_elf_file(obj)
    assert info.sass_archs == {86}
    assert info.ptx_archs == {90}


def test_interrupted_provision_is_never_trusted(tmp_path: Path) -> None:
    """Kill a provisioning run mid-way: no root may appear; the next run makes a whole one."""
    cache = tmp_path / "cache"
    env = {**os.environ, "LLAMAWHEEL_CACHE": str(cache)}
    proc = subprocess.Popen([sys.executable, "-m", "llamawheel", "toolchain", "13.0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    toolchains = cache / "toolchains"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(toolchains.glob(".incoming-*")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, pip included, as a lost session or reboot would
    proc.wait()
    assert list(toolchains.glob(".incoming-*")), "the run was killed before it started provisioning"
    final = toolchains / "cuda-13.0-pypi"
    assert not final.exists()

    result = subprocess.run([sys.executable, "-m", "llamawheel", "toolchain", "13.0"], env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    assert (final / "llamawheel-toolchain.json").is_file()
    assert not list(toolchains.glob(".incoming-*"))
    shutil.rmtree(cache)
