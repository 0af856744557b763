"""Integration tests use real parts: pip through a real index, NVIDIA's real nvcc, a real
HTTP server on loopback. The CUDA toolchain lives in the normal cache (it is a cache: the
first run downloads about 525 MB, later runs reuse it)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llamawheel.core import paths
from llamawheel.core.errors import UsageError
from llamawheel.pipeline import manifest
from llamawheel.recipe import catalog, platforms

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "cublas_probe"
CPU_PATTERN = "llama_cpp_python-0.3.36+cpu-*_x86_64.whl"
ARM_CPU_PATTERN = "llama_cpp_python-0.3.36+cpu-*_aarch64.whl"


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
        data = json.loads(manifest.path_for(wheel).read_text())
        made = data["recipe"]
        recipe = catalog.all_recipes()[made["name"]]
        target = platforms.get(data.get("platform", "x86_64"))
    except (OSError, ValueError, KeyError, TypeError, UsageError):
        return False
    return bool(made.get("sha256") == catalog.fingerprint(recipe, target))


def cached_wheels(pattern: str) -> list[Path]:
    """Wheels matching ``pattern``, built from today's recipes, in wheels/ or anywhere (three folders deep) in
    llamawheel's cache."""
    cache = paths.cache_dir()
    found = sorted(ROOT.glob(f"wheels/{pattern}"))
    for depth in ("*", "*/*", "*/*/*"):
        found += sorted(p for p in cache.glob(f"{depth}/{pattern}") if "toolchains" not in p.parts)
    return [w for w in found if current_build(w)]


@dataclass
class RedisStore:
    """A real Redis (Debian's redis-server) on loopback, with a password, as the shared compile cache store."""

    port: int
    password: str = field(repr=False)
    filled: set[int] = field(default_factory=set)
    """Databases a build of this session has filled."""

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def env(self) -> dict[str, str]:
        """How a user gives llamawheel the password: sccache's own variable."""
        return {"SCCACHE_REDIS_PASSWORD": self.password}

    def keys(self, db: int) -> int:
        out = subprocess.run(["redis-cli", "-p", str(self.port), "-n", str(db), "--no-auth-warning", "dbsize"],
                             capture_output=True, text=True, env={**os.environ, "REDISCLI_AUTH": self.password})
        return int(out.stdout.strip() or 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisStore | None]:
    """The session's Redis, or None where redis-server is not installed (.ci/run installs it). Its password is in
    its configuration file, not its arguments, so that a process listing never shows it."""
    server = shutil.which("redis-server")
    if server is None:
        yield None
        return
    folder = tmp_path_factory.mktemp("redis")
    store = RedisStore(free_port(), secrets.token_hex(16))
    conf = folder / "redis.conf"
    conf.write_text(f"port {store.port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {folder}\n"
                    f"requirepass {store.password}\n")
    proc = subprocess.Popen([server, str(conf)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(store.port), "ping"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        yield store
    finally:
        proc.terminate()
        proc.wait(timeout=30)


CPU_REMOTE_DB = 0
"""The Redis database the CPU wheel's compiles go to when this session builds it (machine A)."""


@pytest.fixture(scope="session")
def cpu_wheel(redis_store: RedisStore | None) -> Path:
    """The CPU variant of llama-cpp-python 0.3.36: one already built (wheels/ or the cache), else built once
    into ~/.cache/llamawheel/test-wheels/cpu/ (about 10 minutes cold on 2 cores; the compile cache makes it fast
    later), its compiles shared through the session's Redis (``redis_store``)."""
    found = cached_wheels(CPU_PATTERN)
    if found:
        return found[0]
    out = paths.cache_dir() / "test-wheels" / "cpu"
    shutil.rmtree(out, ignore_errors=True)  # a wheel of older recipes
    remote = ["--compile-cache-url", redis_store.url(CPU_REMOTE_DB)] if redis_store else []
    result = llamawheel("build", "cpu", "--out", str(out), "--no-server", *remote,
                        env=redis_store.env if redis_store else None)
    assert result.returncode == 0, result.stderr[-4000:]
    if redis_store:
        redis_store.filled.add(CPU_REMOTE_DB)
    (wheel,) = out.glob(CPU_PATTERN)
    return wheel


@pytest.fixture(scope="session")
def arm_cpu_wheel() -> Path:
    """The aarch64 CPU wheel of llama-cpp-python 0.3.36, cross-compiled in the bullseye root: one already built,
    else built once into ~/.cache/llamawheel/test-wheels/cpu-aarch64/ (about 6 minutes cold on 2 cores)."""
    found = cached_wheels(ARM_CPU_PATTERN)
    if found:
        return found[0]
    out = paths.cache_dir() / "test-wheels" / "cpu-aarch64"
    shutil.rmtree(out, ignore_errors=True)  # a wheel of older recipes
    result = llamawheel("build", "cpu", "--platform", "aarch64", "--out", str(out), "--no-server")
    assert result.returncode == 0, result.stderr[-4000:]
    (wheel,) = out.glob(ARM_CPU_PATTERN)
    return wheel


CU130_PATTERN = "llama_cpp_python-0.3.36+cu130.sm90-*_x86_64.whl"


@pytest.fixture(scope="session")
def cu130_wheel() -> Path:
    """The CUDA 13.0 sm_90 wheel of llama-cpp-python 0.3.36: one already built (wheels/ or the cache), else
    built once into ~/.cache/llamawheel/test-wheels/cu130.sm90/ (about 30 minutes cold on 2 cores: the
    CUDA kernels; the compile cache makes it about a minute later)."""
    found = cached_wheels(CU130_PATTERN)
    if found:
        return found[0]
    out = paths.cache_dir() / "test-wheels" / "cu130.sm90"
    shutil.rmtree(out, ignore_errors=True)  # a wheel of older recipes
    result = llamawheel("build", "13.0", "--arch", "90", "--out", str(out), "--no-server", timeout=5400)
    assert result.returncode == 0, result.stderr[-4000:]
    (wheel,) = out.glob(CU130_PATTERN)
    return wheel


KERNEL_SCRIPT = r'''
# One CPU level's own code, called directly (no score check, no probe, no choice): a 256x256 f32 matrix product.
import ctypes, sys
from pathlib import Path
lib = Path(sys.argv[1]); variant = sys.argv[2]
base = ctypes.CDLL(str(lib / "libggml-base.so"))
cpu = ctypes.CDLL(str(lib / f"libggml-cpu-{variant}.so"))
class Params(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]
P = ctypes.c_void_p
base.ggml_init.restype = P; base.ggml_init.argtypes = [Params]
base.ggml_new_tensor_2d.restype = P
base.ggml_new_tensor_2d.argtypes = [P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
base.ggml_mul_mat.restype = P; base.ggml_mul_mat.argtypes = [P, P, P]
base.ggml_new_graph.restype = P; base.ggml_new_graph.argtypes = [P]
base.ggml_build_forward_expand.argtypes = [P, P]
cpu.ggml_set_f32.restype = P; cpu.ggml_set_f32.argtypes = [P, ctypes.c_float]
cpu.ggml_graph_compute_with_ctx.argtypes = [P, P, ctypes.c_int]
cpu.ggml_get_f32_1d.restype = ctypes.c_float; cpu.ggml_get_f32_1d.argtypes = [P, ctypes.c_int]
cpu.ggml_cpu_init()
ctx = base.ggml_init(Params(64 * 1024 * 1024, None, False))
a = base.ggml_new_tensor_2d(ctx, 0, 256, 256); b = base.ggml_new_tensor_2d(ctx, 0, 256, 256)
cpu.ggml_set_f32(a, 0.5); cpu.ggml_set_f32(b, 2.0)
c = base.ggml_mul_mat(ctx, a, b)
gf = base.ggml_new_graph(ctx); base.ggml_build_forward_expand(gf, c)
cpu.ggml_graph_compute_with_ctx(ctx, gf, 1)
print(variant, cpu.ggml_get_f32_1d(c, 0))
'''
