"""Integration tests use real parts: pip through a real index, NVIDIA's real nvcc, a real
HTTP server on loopback. The CUDA toolchain lives in the normal cache (it is a cache: the
first run downloads about 525 MB, later runs reuse it)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "cublas_probe"


def llamawheel(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "llamawheel", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=1800,
    )


@pytest.fixture(scope="session")
def cuda_root() -> Path:
    """A CUDA 13.0 root provisioned from PyPI for real (reused from the cache when complete)."""
    result = llamawheel("toolchain", "13.0")
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def probe_wheel(cuda_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The cuBLAS fixture package built for sm_90 through build -> repair -> verify."""
    out = tmp_path_factory.mktemp("probe-out")
    result = llamawheel("build", "13.0", "--arch", "90", "--source", str(FIXTURE), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    yield wheel, result.stdout + result.stderr
