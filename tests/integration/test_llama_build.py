"""The real thing: llama-cpp-python for CUDA 13.0, sm_90 (about an hour cold on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import llamawheel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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
