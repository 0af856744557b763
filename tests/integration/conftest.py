"""Integration tests use real parts: pip through a real index, NVIDIA's real nvcc, a real
HTTP server on loopback. The CUDA toolchain lives in the normal cache (it is a cache: the
first run downloads about 525 MB, later runs reuse it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamawheel.core import paths
from llamawheel.pipeline import manifest
from llamawheel.recipe import catalog

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "cublas_probe"
CPU_PATTERN = "llama_cpp_python-0.3.36+cpu-*.whl"


def llamawheel(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "llamawheel", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=timeout,
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


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny q8_0 llama (random weights, the sdist's real 32000-token vocabulary), made on the spot."""
    path = tmp_path_factory.mktemp("model") / "tiny.gguf"
    result = llamawheel("tiny-model", str(path), "--type", "q8_0")
    assert result.returncode == 0, result.stderr
    return path


def current_build(wheel: Path) -> bool:
    """Whether ``wheel`` was built from the recipes as they are now (its manifest's recipe sha256): a wheel
    from before a recipe, its defaults or its patches changed is not what a build gives today."""
    try:
        made = json.loads(manifest.path_for(wheel).read_text())["recipe"]
        recipe = catalog.all_recipes()[made["name"]]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(made.get("sha256") == catalog.fingerprint(recipe))


def cached_wheels(pattern: str) -> list[Path]:
    """Wheels matching ``pattern``, built from today's recipes, in wheels/ or anywhere (three folders deep) in
    llamawheel's cache."""
    cache = paths.cache_dir()
    found = sorted(ROOT.glob(f"wheels/{pattern}"))
    for depth in ("*", "*/*", "*/*/*"):
        found += sorted(p for p in cache.glob(f"{depth}/{pattern}") if "toolchains" not in p.parts)
    return [w for w in found if current_build(w)]


@pytest.fixture(scope="session")
def cpu_wheel() -> Path:
    """The CPU variant of llama-cpp-python 0.3.36: one already built (wheels/ or the cache), else built once
    into ~/.cache/llamawheel/test-wheels/cpu/ (about 10 minutes cold on 2 cores; ccache makes it fast later)."""
    found = cached_wheels(CPU_PATTERN)
    if found:
        return found[0]
    out = paths.cache_dir() / "test-wheels" / "cpu"
    shutil.rmtree(out, ignore_errors=True)  # a wheel of older recipes
    result = llamawheel("build", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    (wheel,) = out.glob(CPU_PATTERN)
    return wheel


CU130_PATTERN = "llama_cpp_python-0.3.36+cu130.sm90-*.whl"


@pytest.fixture(scope="session")
def cu130_wheel() -> Path:
    """The CUDA 13.0 sm_90 wheel of llama-cpp-python 0.3.36: one already built (wheels/ or the cache), else
    built once into ~/.cache/llamawheel/test-wheels/cu130.sm90/ (about 30 minutes cold on 2 cores: the
    CUDA kernels; ccache makes it about a minute later)."""
    found = cached_wheels(CU130_PATTERN)
    if found:
        return found[0]
    out = paths.cache_dir() / "test-wheels" / "cu130.sm90"
    shutil.rmtree(out, ignore_errors=True)  # a wheel of older recipes
    result = llamawheel("build", "13.0", "--arch", "90", "--out", str(out), timeout=5400)
    assert result.returncode == 0, result.stderr[-4000:]
    (wheel,) = out.glob(CU130_PATTERN)
    return wheel
