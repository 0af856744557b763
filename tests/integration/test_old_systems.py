"""The wheels where users' systems are: Debian 11 (bullseye: glibc 2.31, GCC 10, Python 3.9 with its pip 20.3),
12 and 13 roots made with mmdebstrap from the apt mirror. Into each, with the network cut, pip installs the
CPU wheel and the CUDA 13.0 wheel from the private index; the CPU wheel answers with the tiny model, with the logits
the wheel built before the glibc 2.28 binding gave (tests/data/tiny-logits.json); the CUDA
wheel imports and every library it needs resolves (NVIDIA's runtime wheels included; this machine has no GPU).
And the test can fail: a wheel that needs GCC 12's libstdc++ (manylinux_2_35) is refused in bullseye.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from llamawheel.core import paths
from llamawheel.core.errors import ToolchainError
from llamawheel.mirror.profiles import load_profile
from llamawheel.toolchain import buildroot
from llamawheel.wheel import policy
from llamawheel.wheel.elf import read_elf_file
from llamawheel.wheel.wheelfile import Entry, write_wheel

from .conftest import ROOT, llamawheel

pytestmark = pytest.mark.skipif(
    not (shutil.which("mmdebstrap") and shutil.which("bwrap")),
    reason="needs mmdebstrap and bubblewrap (apt-get install mmdebstrap bubblewrap; .ci/run does)",
)

SUITES = ("bullseye", "bookworm", "trixie")
LOGITS = ROOT / "tests" / "logits.py"
REFERENCE = ROOT / "tests" / "data" / "tiny-logits.json"
VENV = "/opt/venv"
PYTHONS = tuple(buildroot.SUITES[s].python for s in SUITES)


def target_root(suite: str) -> buildroot.Root:
    """A user's system: Debian ``suite`` with its own python3 and a venv made by it (its own pip), nothing else."""
    return buildroot.make_root(f"target-{suite}", suite, ("python3", "python3-venv"), load_profile("default"),
                               hooks=[f'chroot "$1" python3 -m venv {VENV}'],
                               folder=paths.cache_dir() / "test-roots")


@pytest.fixture(scope="module", params=SUITES)
def root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> buildroot.Root:
    """A fresh copy of the cached target root (installs do not pile up in the cache)."""
    made = target_root(request.param)
    copy = tmp_path_factory.mktemp(f"root-{request.param}") / made.name
    subprocess.run(["cp", "-a", str(made.path), str(copy)], check=True)
    return buildroot.Root(copy, made.suite, made.packages, made.origin, made.size_bytes, made.seconds, made.glibc,
                          made.gcc, made.python)


@pytest.fixture(scope="module")
def index(cpu_wheel: Path, cu130_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The private index with both wheels and their closures for the three systems' Pythons."""
    folder = tmp_path_factory.mktemp("old-index") / "wheels"
    versions = [a for v in PYTHONS for a in ("--python-version", v)]
    for wheel in (cpu_wheel, cu130_wheel):
        result = llamawheel("publish", str(wheel), "--index", str(folder), *versions, timeout=3600)
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return folder


def inside(root: buildroot.Root, *argv: str, ro: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``argv`` in ``root`` with the network cut (bubblewrap's own network namespace: loopback only)."""
    cmd = root.command(argv, env={"PATH": f"{VENV}/bin:/usr/bin:/bin"}, ro_binds=ro)
    assert "--unshare-net" in cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800)


def pip_install(root: buildroot.Root, index: Path, variant: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    """A venv of its own for ``variant`` (made by the system's python3, with its pip), and ``pip install
    llama-cpp-python`` into it from the variant's index; returns the venv's python and pip's result."""
    venv = f"/opt/venv-{variant}"
    made = inside(root, "python3", "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    return f"{venv}/bin/python", inside(root, f"{venv}/bin/pip", "install", "--disable-pip-version-check",
                                        "--no-cache-dir", "--index-url", f"{index.as_uri()}/{variant}/simple",
                                        "llama-cpp-python", ro=(index,))


def _installed(pip_output: str) -> str:
    return next((line for line in pip_output.splitlines() if line.startswith("Successfully installed")), "")


ANSWER = r'''
import sys, llama_cpp
from llama_cpp import _backends
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False, seed=3)
out = llm.create_completion("Once upon a time", max_tokens=12, temperature=0)
print(llama_cpp.__version__, _backends.CPU_VARIANT, out["usage"]["completion_tokens"], repr(out["choices"][0]["text"]))
'''


def test_cpu_wheel_installs_offline_and_answers(root: buildroot.Root, index: Path, model: Path) -> None:
    python, installed = pip_install(root, index, "cpu")
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    print(f"{root.suite}: {_installed(installed.stdout)}")
    ran = inside(root, python, "-c", ANSWER, str(model), ro=(model.parent,))
    assert ran.returncode == 0, ran.stderr[-3000:]
    version, variant, tokens, _ = ran.stdout.split(maxsplit=3)
    print(f"{root.suite} (glibc {root.glibc}, Python {root.python}): {ran.stdout.strip()}")
    assert version.startswith("0.3.36") and variant not in ("", "x64") and int(tokens) > 0
    # the same logits as the wheel built before the glibc 2.28 binding (its exp, log and pow are glibc 2.2.5's)
    measured = inside(root, python, str(LOGITS), str(model), ro=(model.parent, LOGITS.parent))
    assert measured.returncode == 0, measured.stderr[-3000:]
    now, before = json.loads(measured.stdout), json.loads(REFERENCE.read_text())
    assert now["variant"] == "x64" and now["tokens"] == before["tokens"]
    assert now["greedy"] == before["greedy"]
    assert [i for i, _ in now["best"]] == [i for i, _ in before["best"]]
    pairs = [(v, before["sampled"][k]) for k, v in now["sampled"].items()] + \
        [(a[1], b[1]) for a, b in zip(now["best"], before["best"], strict=True)]
    worst = max(abs(a - b) for a, b in pairs)
    print(f"{root.suite}: logits differ from the manylinux_2_31 wheel's by {worst:.2e} at most ({len(pairs)} compared)")
    assert worst <= 1e-5


RESOLVE = r'''
import pathlib, subprocess, sys
import llama_cpp
lib = pathlib.Path(llama_cpp.__file__).parent / "lib"
names = sorted(p.name for p in lib.glob("*.so*"))
missing = []
for name in names:
    out = subprocess.run(["ldd", str(lib / name)], capture_output=True, text=True).stdout
    missing += [f"{name}: {line.strip()}" for line in out.splitlines() if "not found" in line]
print(len(names), "libraries:", " ".join(names), "missing:", missing)
sys.exit(1 if missing else 0)
'''


def test_cuda_wheel_installs_offline_imports_and_resolves_every_library(root: buildroot.Root, index: Path) -> None:
    python, installed = pip_install(root, index, "cu130")
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert "nvidia-cublas" in installed.stdout, installed.stdout[-2000:]
    print(f"{root.suite}: {_installed(installed.stdout)}")
    ran = inside(root, python, "-c", RESOLVE)
    print(f"{root.suite}: {ran.stdout.strip()}")
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "libggml-cuda.so" in ran.stdout and "libggml-cpu-haswell.so" in ran.stdout


def _newer_wheel(folder: Path) -> Path:
    """A wheel whose library needs GCC 12's libstdc++ (built here with this machine's g++): manylinux_2_35."""
    source = folder / "new.cpp"
    source.write_text("#include <vector>\nint at(std::vector<int>& v, int i) { return v[i]; }\n")
    lib = folder / "libnew.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-O1", "-D_GLIBCXX_ASSERTIONS", str(source), "-o", str(lib)],
                   check=True)
    tag = policy.platform_tag([read_elf_file(lib)])
    dist = "probe_new-1.0.dist-info"
    entries = [
        Entry("probe_new/__init__.py", b""),
        Entry("probe_new/libnew.so", lib.read_bytes(), 0o755),
        Entry(f"{dist}/METADATA", b"Metadata-Version: 2.1\nName: probe-new\nVersion: 1.0\n\n"),
        Entry(f"{dist}/WHEEL", f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: false\n"
                               f"Tag: py3-none-{tag}\n".encode()),
    ]
    wheel = folder / f"probe_new-1.0-py3-none-{tag}.whl"
    write_wheel(entries, wheel)
    return wheel


def test_a_wheel_needing_newer_libstdcxx_is_refused_in_bullseye(tmp_path: Path) -> None:
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    wheel = _newer_wheel(tmp_path)
    if not wheel.name.endswith("manylinux_2_35_x86_64.whl"):
        pytest.skip(f"this machine's g++ gives {wheel.name}, not a GCC 12 manylinux_2_35 wheel")
    old = target_root("bullseye")
    # into a folder on the root's /tmp (a fresh tmpfs): the cached root stays as it was
    refused = inside(old, f"{VENV}/bin/pip", "install", "--no-index", "--target", "/tmp/t", str(wheel),
                     ro=(tmp_path,))
    print(f"bullseye: {(refused.stdout + refused.stderr).strip().splitlines()[-1]}")
    assert refused.returncode != 0
    assert "is not a supported wheel on this platform" in refused.stdout + refused.stderr
    new = target_root("trixie")
    taken = inside(new, f"{VENV}/bin/pip", "install", "--no-index", "--target", "/tmp/t", str(wheel),
                   ro=(tmp_path,))
    assert taken.returncode == 0, taken.stdout + taken.stderr


def test_a_root_that_cannot_be_made_leaves_nothing_behind(tmp_path: Path) -> None:
    """mmdebstrap fails for real (a package no Debian release has): the error names the suite and the log, and
    no half-made root is left for a later run to trust."""
    with pytest.raises(ToolchainError) as err:
        buildroot.make_root("broken", "bullseye", ("python3", "llamawheel-no-such-package"),
                            load_profile("default"), folder=tmp_path)
    assert "mmdebstrap could not make the Debian bullseye root" in err.value.message
    assert "broken.log" in str(err.value.tip)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.lock", "broken.log"]
