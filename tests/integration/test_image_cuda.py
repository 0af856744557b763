"""The CUDA 13 runtime image: built by ``llamawheel image --variant cu130`` from an index holding the real
CUDA 13.0 sm_90 wheel and NVIDIA's runtime wheels, then opened and checked: no compiler, no toolkit, and
every library the wheel ships resolves inside the image (only the driver's libcuda.so.1 comes from the
host at run time, opened by the CUDA runtime). On a machine with an NVIDIA GPU the same chat the UI sends
is served with every layer offloaded; elsewhere that test is skipped and says why."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ..gpu import host_gpu
from .conftest import llamawheel
from .test_image import ALIAS, ENV, IMAGE_PYTHON, _config, _free_port, _read_like_the_ui, _stop, buildah

pytestmark = pytest.mark.skipif(
    shutil.which("buildah") is None or shutil.which("mmdebstrap") is None,
    reason="needs buildah and mmdebstrap (apt-get install buildah mmdebstrap; .ci/run does)",
)

SITE = f"/opt/llama/lib/python{IMAGE_PYTHON}/site-packages"


@pytest.fixture(scope="module")
def cuda_image(cu130_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("image-cu130")
    published = llamawheel("publish", str(cu130_wheel), "--index", str(base / "wheels"),
                           "--python-version", IMAGE_PYTHON)
    assert published.returncode == 0, published.stdout + published.stderr
    started = time.monotonic()
    result = llamawheel("image", "--variant", "cu130", "--index", str(base / "wheels"))
    print(f"llamawheel image --variant cu130: {time.monotonic() - started:.1f}s")
    assert result.returncode == 0, result.stdout + result.stderr
    manifest_line = re.search(r"manifest (\S+)", result.stdout)
    assert manifest_line, result.stdout
    manifest: dict[str, Any] = json.loads(Path(manifest_line[1]).read_text())
    assert f"size {manifest['size_bytes'] / 1e6:.1f} MB uncompressed (target: under 1200 MB)" in result.stdout
    return manifest


def _inside(tag: str, *command: str) -> str:
    container = buildah("from", "--pull-never", tag).stdout.strip()
    try:
        return buildah("run", container, "--", *command).stdout
    finally:
        buildah("rm", container)


def test_cuda_image_installs_the_cuda_wheel_and_nvidias_runtime(cuda_image: dict[str, Any]) -> None:
    assert cuda_image["llama_cpp_python"] == "0.3.36+cu130.sm90"
    assert cuda_image["tags"] == ["localhost/llamawheel-api:cu130", "localhost/llamawheel-api:0.3.36-cu130.sm90"]
    script = ("import importlib.metadata as m\n"
              "for d in m.distributions(): print(d.metadata['Name'].lower() + '==' + d.version)")
    installed = set(_inside(cuda_image["image"], "python3", "-c", script).split())
    assert "llama_cpp_python==0.3.36+cu130.sm90" in installed or "llama-cpp-python==0.3.36+cu130.sm90" in installed
    # the release the wheel was built and verified against (the recipe's toolchain pins), not the newest 13.x
    assert {"nvidia-cublas==13.0.2.14", "nvidia-cuda-runtime==13.0.96"} <= installed, sorted(installed)


def test_cuda_image_holds_no_compiler_and_no_toolkit(cuda_image: dict[str, Any]) -> None:
    script = (
        "import os, shutil\n"
        "tools = [t for t in ('gcc', 'cc', 'g++', 'nvcc', 'ptxas', 'pip', 'apt-get') if shutil.which(t)]\n"
        "found = []\n"
        "for folder, dirs, files in os.walk('/'):\n"
        "    if folder.startswith(('/proc', '/sys', '/dev')): dirs[:] = []; continue\n"
        "    found += [os.path.join(folder, f) for f in files if f in ('cuda_runtime.h', 'cublas_v2.h', 'nvcc')"
        " or f.endswith('.a')]\n"
        "print(tools, found, os.path.exists('/usr/local/cuda'))\n"
    )
    assert _inside(cuda_image["image"], "python3", "-c", script).strip() == "[] [] False"


def test_every_library_of_the_wheel_resolves_inside_the_image(cuda_image: dict[str, Any]) -> None:
    script = f"for f in {SITE}/llama_cpp/lib/*.so; do echo \"== $f\"; ldd \"$f\"; done"
    out = _inside(cuda_image["image"], "sh", "-c", script)
    libraries = re.findall(r"^== (\S+)$", out, re.M)
    assert any(p.endswith("/libggml-cuda.so") for p in libraries), out
    resolved = {name: os.path.normpath(path) for name, path in re.findall(r"^\s+(\S+) => (/\S+)", out, re.M)}
    missing = sorted(set(re.findall(r"^\s+(\S+) => not found$", out, re.M)))
    assert missing == [], out  # libcuda.so.1, the driver's, is opened by cudart at run time, not linked
    assert resolved["libcublas.so.13"] == f"{SITE}/nvidia/cu13/lib/libcublas.so.13"
    assert resolved["libcudart.so.13"] == f"{SITE}/nvidia/cu13/lib/libcudart.so.13"
    assert resolved["libggml-base.so"] == f"{SITE}/llama_cpp/lib/libggml-base.so"


@pytest.mark.gpu
def test_on_a_gpu_the_ui_chat_is_served_with_every_layer_offloaded(
    cuda_image: dict[str, Any], tmp_path: Path
) -> None:
    """The served-on-GPU chat. The image, given the host's GPU devices and driver libraries, answers the chat the
    UI sends with every layer offloaded."""
    models = tmp_path / "models"
    models.mkdir()
    assert llamawheel("tiny-model", str(models / "llama-2-7b-chat.bin"), "--ctx", "4096").returncode == 0
    driver = [m for m in re.findall(r"=> (\S+)", subprocess.run(["ldconfig", "-p"], capture_output=True,
                                                                text=True).stdout)
              if Path(m).name in ("libcuda.so.1", "libnvidia-ml.so.1")]
    mounts = [f"-v={lib}:/usr/lib/x86_64-linux-gnu/{Path(lib).name}:ro" for lib in dict.fromkeys(driver)]
    devices = [f"--device={d}" for d in host_gpu()]
    port = _free_port()
    container = buildah("from", "--pull-never", cuda_image["image"]).stdout.strip()
    log = tmp_path / "server.log"
    process = subprocess.Popen(
        ["buildah", "run", f"-v={models}:/models:ro", *mounts, *devices, f"--env=PORT={port}",
         "--env=HOST=127.0.0.1", container, "--",
         *_config(cuda_image["image"])["Entrypoint"]],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **ENV}, start_new_session=True, text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        body = {"model": ALIAS, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16,
                "stream": True}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            text, finish, problems = _read_like_the_ui(response.read())
        assert problems == [] and finish is not None and text.strip()
        out = log.read_text()
        assert "N_GPU_LAYERS=auto: all 3 layers on the GPU" in out, out
        assert re.search(r"offloaded 3/3 layers to GPU", out), out
    finally:
        _stop(container, process)
