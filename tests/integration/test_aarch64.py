"""The aarch64 CPU wheel where Arm users are, proven on this x86-64 machine: cross-compiled in the bullseye root,
published beside the x86-64 wheel in one private index, installed with the network cut into an arm64 Debian 11
userland made with mmdebstrap from the apt mirror, and run there under QEMU user mode as three CPU models
(a Cortex-A57, Armv8.0; a Neoverse N1, Armv8.2 with dot product and FP16; QEMU's ``max``, with SVE2 and I8MM),
each of which loads a different level of the wheel and answers with the tiny model. The test can fail: the
Armv8.6 level's code, forced on the Cortex-A57, dies with SIGILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamawheel.core import paths
from llamawheel.mirror.profiles import load_profile
from llamawheel.recipe import platforms
from llamawheel.toolchain import buildroot
from llamawheel.wheel.wheelfile import Entry, read_entries, write_wheel

from .conftest import FIXTURE, KERNEL_SCRIPT, free_port, llamawheel

ARM = platforms.AARCH64
pytestmark = pytest.mark.skipif(
    not (shutil.which("mmdebstrap") and shutil.which("bwrap") and shutil.which(ARM.qemu)),
    reason="needs mmdebstrap, bubblewrap and qemu-user (apt-get install mmdebstrap bubblewrap qemu-user; .ci/run does)",
)

USERLAND = ("python3.9-minimal", "libpython3.9-stdlib", "libc6", "zlib1g", "libexpat1", "libffi7", "libssl1.1",
            "libstdc++6", "libgcc-s1", "python3-distutils", "python3-pip")
"""An Arm user's Debian 11 with its own Python 3.9 and pip 20.3, nothing else."""
PYTHON = "/usr/bin/python3.9"


@pytest.fixture(scope="module")
def userland(tmp_path_factory: pytest.TempPathFactory) -> buildroot.Root:
    """A fresh copy of the cached arm64 Debian 11 userland (installs do not pile up in the cache)."""
    made = buildroot.make_root("target-bullseye-arm64", "bullseye", USERLAND, load_profile("default"),
                               folder=paths.cache_dir() / "test-roots", target=ARM)
    assert made.platform == "aarch64" and made.glibc == "2.31", made
    copy = tmp_path_factory.mktemp("arm64") / made.name
    subprocess.run(["cp", "-a", str(made.path), str(copy)], check=True)
    return buildroot.Root(copy, made.suite, made.packages, made.origin, made.size_bytes, made.seconds, made.glibc,
                          made.gcc, made.python, platform=made.platform)


@pytest.fixture(scope="module")
def arm_probe_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cuBLAS fixture package cross-compiled for aarch64 with CUDA 13.0 (sm_90, Grace Hopper): nvcc of the
    x86-64 toolchain, the root's aarch64 g++ as its host compiler, linked against NVIDIA's aarch64 wheels."""
    out = tmp_path_factory.mktemp("arm-probe")
    result = llamawheel("build", "13.0", "--arch", "90", "--platform", "aarch64", "--source", str(FIXTURE),
                        "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS  machine" in result.stdout and "EM_AARCH64" in result.stdout
    (wheel,) = out.glob("cublas_probe-0.1.0+cu130.sm90-py3-none-manylinux_2_28_aarch64.whl")
    return wheel


@pytest.fixture(scope="module")
def index(cpu_wheel: Path, arm_cpu_wheel: Path, arm_probe_wheel: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One private index with the x86-64 and the aarch64 CPU wheels side by side, the aarch64 cuBLAS probe, and
    each one's closure for Debian 11's Python."""
    folder = tmp_path_factory.mktemp("arm-index") / "wheels"
    for wheel in (cpu_wheel, arm_cpu_wheel, arm_probe_wheel):
        result = llamawheel("publish", str(wheel), "--index", str(folder), "--python-version", "3.9",
                            "--python-version", "3.11", timeout=3600)
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return folder


def run_as(root: buildroot.Root, cpu: str, *argv: str, env: dict[str, str] | None = None,
           ro: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    cmd = root.emulated(argv, cpu=cpu, env=env or {}, ro_binds=ro)
    assert "--unshare-net" in cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def site(userland: buildroot.Root, index: Path) -> Path:
    """``pip install llama-cpp-python`` from the index, by the userland's own pip under QEMU, network cut."""
    target = userland.path / "opt" / "site"
    installed = run_as(userland, "max", PYTHON, "-m", "pip", "install", "--disable-pip-version-check",
                       "--no-cache-dir", "--target", str(target), "--index-url", f"{index.as_uri()}/cpu/simple",
                       "llama-cpp-python", ro=(index,))
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    print(next(line for line in installed.stdout.splitlines() if line.startswith("Successfully installed")))
    return target


def test_the_index_holds_both_platforms_and_the_arm_machine_takes_its_own(index: Path, site: Path) -> None:
    names = sorted(p.name for p in (index / "cpu").rglob("llama_cpp_python-*.whl"))
    assert [n.split("-")[-1] for n in names] == ["manylinux_2_28_aarch64.whl", "manylinux_2_28_x86_64.whl"], names
    assert len(list((index / "cpu").rglob("numpy-*aarch64*.whl"))) == 2  # the aarch64 closure too (3.9, 3.11)
    locks = sorted(p.name for p in (index / "cpu" / "simple").glob("pylock.*.toml"))
    assert locks == ["pylock.cp311-aarch64.toml", "pylock.cp311-x86_64.toml", "pylock.cp39-aarch64.toml",
                     "pylock.cp39-x86_64.toml"], locks
    checked = llamawheel("index", "check", str(index))
    assert checked.returncode == 0 and "lock(s) match the files" in checked.stdout, checked.stdout + checked.stderr
    (record,) = site.glob("llama_cpp_python-*.dist-info/WHEEL")
    assert "Tag: py3-none-manylinux_2_28_aarch64" in record.read_text()
    (numpy,) = site.glob("numpy-*.dist-info/WHEEL")
    assert "aarch64" in numpy.read_text()


ANSWER = r'''
import sys, llama_cpp
from llama_cpp import _backends
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, n_threads=1, verbose=False, seed=3)
out = llm.create_completion("Once upon a time", max_tokens=8, temperature=0)
print(llama_cpp.__version__, _backends.CPU_VARIANT, out["usage"]["completion_tokens"], repr(out["choices"][0]["text"]))
'''


def test_three_cpu_models_load_three_levels_and_each_answers(userland: buildroot.Root, site: Path,
                                                             model: Path) -> None:
    """The loader runs one instruction of each feature in a forked child (QEMU user mode cannot start a second
    interpreter) and takes the best level whose instructions all ran."""
    chosen = {}
    for cpu in ARM.qemu_cpus:
        ran = run_as(userland, cpu, PYTHON, "-c", ANSWER, str(model), env={"PYTHONPATH": str(site)},
                     ro=(model.parent,))
        assert ran.returncode == 0, ran.stderr[-3000:]
        version, variant, tokens, text = ran.stdout.split(maxsplit=3)
        print(f"qemu-aarch64 -cpu {cpu}: llama-cpp-python {version}, CPU variant {variant}, {tokens} tokens: {text}")
        assert version == "0.3.36" and int(tokens) > 0
        chosen[cpu] = variant
    assert chosen == {"cortex-a57": "armv8.0_1", "neoverse-n1": "armv8.2_2", "max": "armv8.6_2"}, chosen


def test_the_armv8_6_level_dies_with_sigill_on_a_cortex_a57_and_the_armv8_0_level_runs(
        userland: buildroot.Root, site: Path) -> None:
    lib = site / "llama_cpp" / "lib"
    runs = run_as(userland, "cortex-a57", PYTHON, "-c", KERNEL_SCRIPT, str(lib), "armv8.0_1")
    assert runs.returncode == 0 and runs.stdout.split() == ["armv8.0_1", "256.0"], runs.stderr[-2000:]
    dies = run_as(userland, "cortex-a57", PYTHON, "-c", KERNEL_SCRIPT, str(lib), "armv8.6_2")
    assert dies.returncode in (-signal.SIGILL, 128 + signal.SIGILL), (dies.returncode, dies.stderr[-2000:])
    assert "Illegal instruction" in dies.stderr


def test_the_wheel_is_arm_code_tagged_for_rhel_8_and_a_planted_x86_library_is_caught(
        arm_cpu_wheel: Path, cpu_wheel: Path, tmp_path: Path) -> None:
    data = json.loads(arm_cpu_wheel.with_name(arm_cpu_wheel.name + ".json").read_text())
    assert data["platform"] == "aarch64" and data["glibc"]["target"] == "2.28"
    assert data["verify_static"]["ok"]
    checks = {c["name"]: c for c in data["verify_static"]["checks"]}
    assert checks["machine"]["ok"] and "EM_AARCH64" in checks["machine"]["detail"]
    assert "armv8.0_1" in checks["CPU variants"]["detail"] and "armv8.6_2" in checks["CPU variants"]["detail"]
    assert checks["CPU variants load"].get("skipped")  # shown as SKIP, not PASS: QEMU runs them (above)
    # an x86-64 library planted in the aarch64 wheel (same name, so only its machine gives it away)
    with zipfile.ZipFile(cpu_wheel) as zf:
        x86 = zf.read("llama_cpp/lib/libggml-base.so")
    entries = [Entry(e.name, x86 if e.name.endswith("/libggml-base.so") else e.data, e.mode)
               for e in read_entries(arm_cpu_wheel)]
    planted = tmp_path / arm_cpu_wheel.name
    write_wheel(entries, planted)
    result = llamawheel("verify-static", str(planted))
    assert result.returncode != 0
    assert "FAIL  machine" in result.stdout and "libggml-base.so is EM_X86_64" in result.stdout, result.stdout


LOAD = r'''
import ctypes, os, pathlib
import cublas_probe
ctypes.CDLL(str(pathlib.Path(cublas_probe.__file__).parent / "lib" / "libcublasprobe.so"), mode=os.RTLD_NOW)
print("\n".join(sorted({line.split()[-1] for line in open("/proc/self/maps") if ".so" in line.split()[-1]})))
'''


@pytest.mark.slow
def test_the_aarch64_cuda_probe_installs_offline_and_finds_cudart_and_cublas_in_nvidias_aarch64_wheels(
        userland: buildroot.Root, index: Path) -> None:
    """No GPU here: what is proven is that the wheel's library loads on Arm with every symbol resolved, its
    libcudart.so.13 and libcublas.so.13 the ones of NVIDIA's aarch64 wheels, installed beside it by pip. Behind
    --run-slow (pip and the loader under QEMU, about a minute cold) to keep a cold .ci/run near an hour; the
    index's aarch64 cu130 pages are checked above."""
    target = userland.path / "opt" / "cuda-site"
    installed = run_as(userland, "max", PYTHON, "-m", "pip", "install", "--disable-pip-version-check",
                       "--no-cache-dir", "--target", str(target), "--index-url", f"{index.as_uri()}/cu130/simple",
                       "cublas-probe", ro=(index,))
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert "nvidia-cublas-13.10.0.20" in installed.stdout and "nvidia-cuda-runtime-13.0.96" in installed.stdout
    loaded = run_as(userland, "neoverse-n1", PYTHON, "-c", LOAD, env={"PYTHONPATH": str(target)})
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    print(loaded.stdout)
    nvidia = target / "nvidia" / "cu13" / "lib"
    for name in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13"):
        assert str(nvidia / name) in loaded.stdout.splitlines(), name


KEY = "sk-arm-test-key"


@pytest.fixture(scope="module")
def arm_image(index: Path) -> Iterator[str]:
    """``llamawheel image --variant cpu --platform aarch64``: built here with buildah without running anything of it
    (an unpacked arm64 base, the closure installed by pip here, no RUN step); its files mounted."""
    if shutil.which("buildah") is None:
        pytest.skip("needs buildah (apt-get install buildah; .ci/run does)")
    result = llamawheel("image", "--variant", "cpu", "--platform", "aarch64", "--index", str(index),
                        "--engine", "buildah", timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(result.stdout)
    assert "built localhost/llamawheel-api:cpu-aarch64" in result.stdout
    container = subprocess.run(["buildah", "from", "--pull-never", "localhost/llamawheel-api:cpu-aarch64"],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        mounted = subprocess.run(["buildah", "mount", container], capture_output=True, text=True, check=True)
        yield mounted.stdout.strip()
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)


@pytest.mark.slow
def test_the_arm64_image_is_arm_code_for_a_user_of_its_own(arm_image: str) -> None:
    """Behind --run-slow with the chat below: the image needs llama.cpp's server cross-compiled for aarch64 (about
    4.5 minutes cold on 2 cores), which would take a cold .ci/run on a fresh 2-core machine over an hour."""
    data = json.loads(subprocess.run(["buildah", "inspect", "--type", "image", "localhost/llamawheel-api:cpu-aarch64"],
                                     capture_output=True, text=True, check=True).stdout)
    config = data["Docker"]["config"]
    assert data["OCIv1"]["architecture"] == "arm64"
    assert config["User"] == "1000:1000" and config["Entrypoint"] == ["python3", "-m", "llamawheel_runtime.serve"]
    top = Path(arm_image)
    (lib,) = (top / "opt/llama/site/llama_cpp/lib").glob("libggml-cpu-armv8.0_1.so")
    assert lib.read_bytes()[18] == 183  # e_machine: EM_AARCH64
    assert not list(top.glob("usr/bin/gcc*")) and not (top / "opt/llama/site/pip").exists()
    assert "llama:x:1000:1000" in (top / "etc/passwd").read_text()


@pytest.mark.slow
def test_the_arm64_images_server_answers_a_chat_under_qemu(arm_image: str, model: Path, tmp_path: Path) -> None:
    """llama.cpp's server in the image (the llamawheel-server wheel's binary on the arm wheel's libraries), run as a
    Neoverse N1 under QEMU, serving the tiny model on loopback: the chat API llama-gpt's UI uses answers. The image's
    front starts it as a child process, which QEMU's user mode cannot run here (no binfmt_misc), so the binary is
    started as the front starts it: in a folder of links to the backend modules to load (the armv8.2 level), with
    the same arguments. The front itself is the x86-64 image's, tested there. Behind --run-slow (about 80 s) to keep
    a cold .ci/run on a fresh 2-core machine under an hour; the image's build and contents are checked above."""
    top = Path(arm_image)
    site = top / "opt/llama/site"
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "libggml-cpu-armv8.2_2.so").symlink_to(site / "llama_cpp/lib/libggml-cpu-armv8.2_2.so")
    port = free_port()
    qemu = shutil.which(ARM.qemu)
    assert qemu is not None
    server = ["--model", str(model), "--alias", "/models/llama-2-7b-chat.bin", "--host", "127.0.0.1", "--port",
              str(port), "--parallel", "2", "--ctx-size", "1024", "--threads", "2", "--cont-batching", "--no-webui",
              "--chat-template", "llama2", "--no-jinja"]
    cmd = ["bwrap", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--dev", str(top / "dev"),
           "--chdir", str(modules), "--clearenv", "--setenv", "LLAMA_API_KEY", KEY, "--setenv", "HOME", "/tmp",
           "--", qemu, "-cpu", "neoverse-n1", "-L", str(top), str(site / "llamawheel_server/llama-server"), *server]
    log = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        models = None
        for _ in range(600):
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{url}/v1/models", headers=headers),
                                            timeout=5) as r:
                    models = json.loads(r.read())
                    break
            except OSError:
                assert log.poll() is None, log.stdout.read() if log.stdout else ""
                time.sleep(0.5)
        assert models is not None and models["data"], models
        body = {"model": models["data"][0]["id"], "max_tokens": 8,
                "messages": [{"role": "user", "content": "Once upon a time"}]}
        request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=600) as r:
            answer = json.loads(r.read())
        print(f"arm64 image's llama-server under qemu-aarch64 -cpu neoverse-n1: {models['data'][0]['id']}: "
              f"{answer['usage']}")
        assert answer["choices"][0]["message"]["content"] and answer["usage"]["completion_tokens"] > 0
    finally:
        if log.poll() is None:
            os.killpg(log.pid, signal.SIGTERM)
        log.wait(timeout=60)
