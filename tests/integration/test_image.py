"""The CPU runtime image for real: the CPU wheel is published with its closure for the image's Python,
``llamawheel image`` builds the image with buildah from a base mmdebstrap makes from the apt mirror, and
the image's own entry point serves a tiny model mounted at /models on loopback. It is driven exactly as
the llama-gpt UI drives it (``llama-gpt-contract.md``): the model list with a Bearer key, a streamed chat
read line by line, a chat longer than the context, a wrong key; and its declared health check runs."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import llamawheel

pytestmark = pytest.mark.skipif(
    shutil.which("buildah") is None or shutil.which("mmdebstrap") is None,
    reason="needs buildah and mmdebstrap (apt-get install buildah mmdebstrap; .ci/run does)",
)

IMAGE_PYTHON = "3.11"  # Debian bookworm's, the base's Python
ALIAS = "/models/llama-2-7b-chat.bin"
KEY = "sk-llamawheel-test"
ENV = {"BUILDAH_ISOLATION": "chroot"}


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, env={**os.environ, **ENV},
                            timeout=600)
    if check:
        assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr}"
    return result


@dataclass(frozen=True)
class Built:
    output: str
    manifest: dict[str, Any]
    archive: Path
    tag: str
    index: Path


@pytest.fixture(scope="module")
def built(cpu_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """``llamawheel image --variant cpu`` from an index holding the CPU wheel, saved as an OCI archive."""
    base = tmp_path_factory.mktemp("image")
    published = llamawheel("publish", str(cpu_wheel), "--index", str(base / "wheels"),
                           "--python-version", IMAGE_PYTHON)
    assert published.returncode == 0, published.stdout + published.stderr
    archive = base / "llamawheel-api-cpu.tar"
    started = time.monotonic()
    result = llamawheel("image", "--variant", "cpu", "--index", str(base / "wheels"), "--save", str(archive))
    print(f"llamawheel image --variant cpu: {time.monotonic() - started:.1f}s")
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads(Path(str(archive) + ".json").read_text())
    return Built(result.stdout + result.stderr, manifest, archive, manifest["image"], base / "wheels")


def test_build_prints_the_size_and_records_it(built: Built) -> None:
    size = built.manifest["size_bytes"]
    assert size > 50_000_000, size  # Python, llama.cpp and numpy (the 300 MB target: scripts/image-size.py)
    assert built.manifest["tags"] == ["localhost/llamawheel-api:cpu", "localhost/llamawheel-api:0.3.36-cpu"]
    assert built.manifest["llama_cpp_python"] == "0.3.36+cpu"
    assert built.manifest["user"] == "1000:1000"
    assert built.manifest["ggml_converter"]["patches"][0]["file"] == "convert-ggml-byte-shape.patch"
    mb = f"{size / 1e6:.1f} MB"
    assert f"size {mb} uncompressed (target: under 300 MB)" in built.output
    assert f"image localhost/llamawheel-api:cpu: {mb} uncompressed (within the 300 MB target)" in built.output


def test_saved_archive_is_an_oci_archive_with_its_checksum(built: Built) -> None:
    digest = hashlib.sha256(built.archive.read_bytes()).hexdigest()
    assert Path(str(built.archive) + ".sha256").read_text() == f"{digest}  {built.archive.name}\n"
    assert built.manifest["archive"]["sha256"] == digest
    with tarfile.open(built.archive) as tar:
        names = set(tar.getnames())
        assert {"oci-layout", "index.json"} <= names
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert index["manifests"][0]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == (
        "localhost/llamawheel-api:cpu")  # what docker/compose.yaml asks for once loaded
    assert not list(built.archive.parent.glob(".partial-*"))


def test_the_saved_archive_loads_back_under_the_name_compose_uses(built: Built) -> None:
    """What an offline site does with the archive (buildah pull here; podman load and docker load alike)."""
    def layers() -> list[str]:
        found: list[str] = json.loads(buildah("inspect", "--type", "image", built.tag).stdout)["OCIv1"]["rootfs"][
            "diff_ids"]
        return found

    built_layers = layers()
    keep = "localhost/llamawheel-api:kept-by-test"
    buildah("tag", built.tag, keep)
    pulled = ""
    try:
        buildah("rmi", *built.manifest["tags"])  # untags: the kept name still holds the image
        assert buildah("inspect", "--type", "image", built.tag, check=False).returncode != 0
        pulled = buildah("pull", "--quiet", f"oci-archive:{built.archive}").stdout.strip()
        assert layers() == built_layers  # the same file system, under the same name
        assert _config(built.tag)["Entrypoint"] == ["python3", "-m", "llamawheel_runtime.serve"]
    finally:  # the built image (with its health check) under its names again, for the tests after this one
        buildah("tag", keep, *built.manifest["tags"])
        buildah("rmi", keep)
        if pulled:
            buildah("rmi", pulled, check=False)


def test_a_docker_archive_keeps_the_health_check(built: Built, tmp_path: Path) -> None:
    archive = tmp_path / "api-cpu.docker.tar"
    result = llamawheel("image", "--variant", "cpu", "--index", str(built.index), "--save", str(archive),
                        "--save-format", "docker")
    assert result.returncode == 0, result.stdout + result.stderr
    with tarfile.open(archive) as tar:
        (entry,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(entry["Config"]))  # type: ignore[arg-type]
    assert entry["RepoTags"] == ["localhost/llamawheel-api:cpu"]
    assert config["config"]["Healthcheck"]["Test"] == ["CMD", "python3", "-m", "llamawheel_runtime.health"]
    assert json.loads(Path(str(archive) + ".json").read_text())["archive"]["format"] == "docker-archive"


def _config(ref: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", ref).stdout)["Docker"]["config"]
    return config


def test_image_declares_non_root_user_port_and_health_check(built: Built) -> None:
    config = _config(built.tag)
    assert config["User"] == "1000:1000"
    assert "8000/tcp" in config["ExposedPorts"]
    assert config["Entrypoint"] == ["python3", "-m", "llamawheel_runtime.serve"]
    assert config["Healthcheck"]["Test"] == ["CMD", "python3", "-m", "llamawheel_runtime.health"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["HOST"] == "0.0.0.0" and env["PORT"] == "8000"
    assert env["MODEL_CACHE"] == "/cache" and env["N_CTX"] == "4096" and env["N_GPU_LAYERS"] == "auto"
    assert "MODEL_ALIAS" not in env  # the served id follows the model's file name (else the 7B id)


def test_image_holds_no_compiler_no_pip_no_cache(built: Built) -> None:
    script = (
        "import importlib.metadata as m, os, shutil, sys\n"
        "tools = [t for t in ('gcc', 'cc', 'g++', 'nvcc', 'pip', 'pip3', 'apt-get', 'cmake') if shutil.which(t)]\n"
        "dists = sorted(d.metadata['Name'].lower() for d in m.distributions())\n"
        "caches = [p for p in ('/root/.cache', '/home/llama/.cache', '/tmp/context') if os.path.exists(p)]\n"
        "import llama_cpp\n"
        "print(tools, 'pip' in dists, 'setuptools' in dists, caches, llama_cpp.__version__, sys.version_info[:2])\n"
    )
    container = buildah("from", "--pull-never", built.tag).stdout.strip()
    try:
        out = buildah("run", container, "--", "python3", "-c", script).stdout.strip()
    finally:
        buildah("rm", container)
    assert out == "[] False False [] 0.3.36 (3, 11)"


# ----------------------------------------------------------------------------- the running server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Api:
    container: str
    port: int
    models: Path
    process: subprocess.Popen[str]
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder like llama-gpt's, the GGUF under a name of the UI's and one folder down."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "tiny").mkdir()
    result = llamawheel("tiny-model", str(folder / "tiny" / "llama-2-7b-chat.bin"), "--ctx", "4096")
    assert result.returncode == 0, result.stderr
    (folder / "README.txt").write_text("not a model\n")
    for path in (folder, folder / "tiny"):
        path.chmod(0o755)  # pytest's folders are 0700; the server runs as uid 1000
    (folder / "tiny" / "llama-2-7b-chat.bin").chmod(0o644)
    return folder


def _serve(tag: str, models: Path, log: Path, port: int, *env: str,
           volumes: tuple[str, ...] = ()) -> tuple[str, subprocess.Popen[str]]:
    container = buildah("from", "--pull-never", tag).stdout.strip()
    entrypoint = _config(tag)["Entrypoint"]
    flags = [f"--env={e}" for e in (f"PORT={port}", *env)] + [f"--volume={v}" for v in volumes]
    process = subprocess.Popen(
        ["buildah", "run", "-v", f"{models}:/models:ro", *flags, container, "--", *entrypoint],
        stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env={**os.environ, **ENV}, start_new_session=True,
    )
    return container, process


def _stop(container: str, process: subprocess.Popen[str]) -> None:
    """Stop the server (SIGTERM, as a container stop does; SIGKILL after 30 s) and remove the container."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=30)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    buildah("rm", container, check=False)


def _started(built: Built, models: Path, log: Path, *env: str, volumes: tuple[str, ...] = ()) -> Api:
    """The image's entry point serving ``models`` on a free loopback port, once the port answers."""
    port = _free_port()
    container, process = _serve(built.tag, models, log, port, *env, volumes=volumes)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return Api(container, port, models, process, log)
        except OSError:
            time.sleep(0.5)
    _stop(container, process)
    pytest.fail("the server never opened its port:\n" + log.read_text())


@pytest.fixture(scope="module")
def api(built: Built, models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The image's entry point serving the models folder with an API key, reachable on loopback."""
    server = _started(built, models, tmp_path_factory.mktemp("api") / "server.log", f"API_KEY={KEY}")
    yield server
    _stop(server.container, server.process)


def _get(url: str, key: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _post_full(api: Api, body: dict[str, Any], key: str = KEY) -> tuple[int, Any, bytes]:
    """A chat request as the UI sends it: (status, headers, body)."""
    request = urllib.request.Request(api.url("/v1/chat/completions"), json.dumps(body).encode(), {
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _post(api: Api, body: dict[str, Any], key: str = KEY) -> tuple[int, str, bytes]:
    status, headers, data = _post_full(api, body, key)
    return status, headers.get("Content-Type", ""), data


def _ui_chat(messages: list[dict[str, str]], model: str = ALIAS) -> dict[str, Any]:
    """The body llama-gpt's UI sends. (A random model never says stop, so its answer runs to the 1000 tokens
    asked.)"""
    return {"model": model, "messages": [{"role": "system", "content": "You are a helpful assistant."}, *messages],
            "max_tokens": 1000, "temperature": 0.5, "stream": True}


def _read_like_the_ui(stream: bytes) -> tuple[str, str | None, list[str]]:
    """What the UI does with the stream: JSON.parse each ``data:`` line, append ``choices[0].delta.content``,
    close at the first chunk whose finish_reason is not null. Returns (text, finish_reason, problems).

    Lines end where SSE says (CR, LF, CRLF), not where ``str.splitlines`` would: a token of the tiny model can be
    U+0085 or U+2028, which JSON leaves unescaped inside a string."""
    text, problems = "", []
    for line in re.split(r"\r\n|\r|\n", stream.decode()):
        if not line.startswith("data: "):
            continue
        try:
            chunk = json.loads(line[len("data: "):])
        except ValueError:
            problems.append(f"unparsable before the finish chunk: {line!r}")
            continue
        if not chunk.get("choices"):
            problems.append("a chunk with empty choices (breaks the UI's stream)")
            continue
        choice = chunk["choices"][0]
        if choice.get("finish_reason") is not None:
            return text, choice["finish_reason"], problems
        text += choice.get("delta", {}).get("content") or ""
    return text, None, problems


def test_runs_as_non_root(api: Api) -> None:
    uids = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"PORT={api.port}".encode() in environ and b"llamawheel_runtime.serve" in cmdline:
            status = (proc / "status").read_text()
            uids.append(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
    assert uids and set(uids) == {"1000"}, uids


def test_models_are_listed_under_the_ui_id_with_the_key(api: Api) -> None:
    status, body = _get(api.url("/v1/models"), KEY)
    assert status == 200
    assert [m["id"] for m in body["data"]] == [ALIAS]
    log = api.log.read_text()
    assert f"serving /models/tiny/llama-2-7b-chat.bin as {ALIAS} on 0.0.0.0:{api.port} (4 chat(s) at once, n_ctx 4096" \
        " each" in log
    assert "N_GPU_LAYERS=auto: this llama-cpp-python build has no GPU backend: every layer on the CPU" in log


def test_a_wrong_or_missing_key_is_refused(api: Api) -> None:
    assert _get(api.url("/v1/models"), "sk-wrong")[0] == 401
    assert _get(api.url("/v1/models"), None)[0] == 401
    status, _, _ = _post(api, _ui_chat([{"role": "user", "content": "hi"}]), key="sk-wrong")
    assert status == 401


def _raw(api: Api, head: bytes, body_chunks: tuple[bytes, ...] = (), timeout: float = 30) -> bytes:
    """Send ``head`` (a request line and headers), then ``body_chunks`` one by one for as long as the server has
    not answered, and return its answer (read as soon as it comes, before the server closes)."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=timeout) as sock:
        sock.sendall(head)
        for chunk in (b"", *body_chunks):
            if select.select([sock], [], [], 0.2)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:  # answered and closed while the body was still coming
                break
        answer = b""
        while not _complete(answer):
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            answer += data
    return answer


def _complete(answer: bytes) -> bool:
    """Whether ``answer`` holds the whole head and as much body as its Content-Length says (the head and the
    body may come in separate reads)."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return len(body) >= int(length.group(1)) if length else True


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _metrics(api: Api) -> dict[str, float]:
    """``/metrics`` as numbers by name (Prometheus text: llama-server's and the front's own)."""
    with urllib.request.urlopen(urllib.request.Request(api.url("/metrics"), headers={
            "Authorization": f"Bearer {KEY}"}), timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}


def test_every_path_needs_the_key_health_and_metrics_too(api: Api) -> None:
    for path in ("/health", "/metrics", "/props", "/slots", "/docs", "/v1/models"):
        request = urllib.request.Request(api.url(path))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401, path
    assert _get(api.url("/health"), KEY) == (200, {"status": "ok"})
    metrics = _metrics(api)
    assert metrics["llamawheel_slots"] == 4 and metrics["llamawheel_queue_limit"] == 8
    for name in ("llamacpp:predicted_tokens_seconds", "llamacpp:requests_processing", "llamacpp:requests_deferred",
                 "llamawheel_requests_waiting", "llamawheel_requests_in_flight"):
        assert name in metrics, sorted(metrics)


def test_slow_clients_without_the_key_neither_queue_nor_delay_a_chat(api: Api) -> None:
    """Twenty clients that send a chat request's headers without the key and then dribble its body: each is
    refused at once (401) and none takes a place in the queue, so a chat with the key is answered in under 2 s
    (before, they filled MAX_QUEUE and the chat got a 503)."""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\nContent-Type: application/json"
            "\r\nContent-Length: 100000\r\n\r\n{\"messages\": [").encode()
    slow = [socket.create_connection(("127.0.0.1", api.port), timeout=30) for _ in range(20)]
    try:
        for sock in slow:
            sock.sendall(head)
        time.sleep(1)
        for sock in slow:
            try:
                sock.sendall(b" ")  # still sending, slowly
            except OSError:
                pass  # already answered and closed
        started = time.monotonic()
        status, _, stream = _post(api, _ui_chat([{"role": "user", "content": "Hi."}]) | {"max_tokens": 8})
        took = time.monotonic() - started
        answers = []
        for sock in slow:
            sock.settimeout(10)
            try:
                answers.append(sock.recv(4096))
            except OSError as exc:
                answers.append(repr(exc).encode())
    finally:
        for sock in slow:
            sock.close()
    assert status == 200, stream[:500]
    _answered_in_full(status, stream)
    assert took < 2.0, f"the chat took {took:.1f} s behind 20 slow clients without a key"
    assert [_status(a) for a in answers] == [401] * 20, answers[:2]


def test_a_100_mb_body_gets_413_without_being_read(api: Api) -> None:
    size = 100 * 2**20
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n").encode()
    answer = _raw(api, head, tuple(b"x" * 2**20 for _ in range(100)))
    assert _status(answer) == 413, answer[:300]
    assert b"MAX_BODY_BYTES" in answer
    chunked = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\nAuthorization: Bearer {KEY}\r\n"
               "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    answer = _raw(api, chunked, tuple(b"100000\r\n" + b"x" * 2**20 + b"\r\n" for _ in range(100)))
    assert _status(answer) == 413, answer[:300]  # no length announced: refused once the limit is passed
    assert api.process.poll() is None


def test_a_preflight_from_another_origin_is_refused(api: Api) -> None:
    request = urllib.request.Request(api.url("/v1/chat/completions"), method="OPTIONS", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403
    assert not [h for h in refused.value.headers if h.lower().startswith("access-control-")]
    status, _, _ = _post(api, {"model": ALIAS, "messages": []}, key="sk-wrong")
    assert status == 401


def test_without_a_key_the_image_refuses_to_serve_other_machines(built: Built, models: Path, tmp_path: Path) -> None:
    out = _log_of_a_server_that_stops(built.tag, models, tmp_path, "HOST=0.0.0.0")
    assert "ERROR HOST=0.0.0.0 can be reached from other machines and API_KEY is not set" in out
    assert "Traceback" not in out
    out = _log_of_a_server_that_stops(built.tag, models, tmp_path, "API_KEY=sk-llamawheel")
    assert "is the key earlier llamawheel compose files gave everyone" in out


def test_streamed_chat_reads_as_the_ui_reads_it(api: Api) -> None:
    status, content_type, stream = _post(api, _ui_chat([{"role": "user", "content": "Say hello."}]))
    assert status == 200 and content_type.startswith("text/event-stream")
    text, finish, problems = _read_like_the_ui(stream)
    assert problems == []
    assert finish in ("stop", "length")
    assert text.strip(), stream[:500]
    first = json.loads(stream.decode().split("data: ", 2)[1])
    assert first["model"] == ALIAS and first["object"] == "chat.completion.chunk"


def test_a_chat_longer_than_the_context_gets_context_length_exceeded_and_the_server_stays_up(api: Api) -> None:
    long = "The quick brown fox jumps over the lazy dog. " * 600  # about 6,000 tokens
    status, content_type, body = _post(api, _ui_chat([{"role": "user", "content": long}]))
    assert status == 400, body[:300]
    assert content_type.startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("This model's maximum context length is 4096 tokens. However, your messages"
                                       " resulted in ")
    assert api.process.poll() is None
    assert _get(api.url("/v1/models"), KEY)[0] == 200
    short = {**_ui_chat([{"role": "user", "content": "And now?"}]), "max_tokens": 16}
    status, _, stream = _post(api, short)
    assert status == 200 and _read_like_the_ui(stream)[1] == "length"


@dataclass
class Timed:
    """A streamed answer with when its first and last content arrived (time.monotonic())."""

    status: int
    stream: bytes = b""
    first: float = 0.0
    last: float = 0.0


def _timed_chat(api: Api, body: dict[str, Any]) -> Timed:
    request = urllib.request.Request(api.url("/v1/chat/completions"), json.dumps(body).encode(), {
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            out = Timed(response.status)
            for line in response:
                out.stream += line
                if b'"content":"' in line:
                    out.first = out.first or time.monotonic()
                    out.last = time.monotonic()
            return out
    except urllib.error.HTTPError as exc:
        return Timed(exc.code, exc.read())


def test_four_people_chatting_at_once_are_answered_at_the_same_time(api: Api) -> None:
    """Four streamed chats as the UI sends them, at the same moment: each gets its whole answer, and they stream
    side by side (every one has its first words before any has its last: nobody waits for another's answer, as
    they did when the image answered one after another). Meanwhile the model list and the health check answer,
    and /metrics counts four busy requests."""
    def chat(i: int) -> Timed:
        body = _ui_chat([{"role": "user", "content": f"Person {i} says hello."}]) | {"logit_bias": {"2": -100}}
        return _timed_chat(api, body)  # 1000 tokens each (the UI's max_tokens), end-of-text suppressed

    seen: dict[str, Any] = {}

    def meanwhile() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until llama.cpp writes all four
            seen["metrics"] = _metrics(api)
            if seen["metrics"]["llamacpp:requests_processing"] == 4:
                break
            time.sleep(0.05)
        seen["models"] = _get(api.url("/v1/models"), KEY)[0]
        seen["health"] = _get(api.url("/health"), KEY)[0]
        seen["at"] = time.monotonic()

    with ThreadPoolExecutor(max_workers=5) as pool:
        watcher = pool.submit(meanwhile)
        answers = list(pool.map(chat, range(4)))
        watcher.result()
    for answer in answers:
        assert answer.status == 200, answer.stream[:300]
        text, finish, problems = _read_like_the_ui(answer.stream)
        assert finish in ("length", "stop") and text.strip() and not problems, answer.stream[:500]
    assert max(a.first for a in answers) < min(a.last for a in answers), [(a.first, a.last) for a in answers]
    assert seen["models"] == 200 and seen["health"] == 200
    assert seen["at"] < max(a.last for a in answers), "the model list and health check waited for the answers"
    assert seen["metrics"]["llamawheel_requests_in_flight"] == 4, seen["metrics"]
    assert seen["metrics"]["llamacpp:requests_processing"] == 4, seen["metrics"]


def test_the_same_seed_gives_the_same_text_streamed_or_not(api: Api) -> None:
    body = _ui_chat([{"role": "user", "content": "Tell me a story."}]) | {"max_tokens": 40, "seed": 42}
    status, _, stream = _post(api, body)
    assert status == 200
    streamed, _, problems = _read_like_the_ui(stream)
    status, _, plain = _post(api, body | {"stream": False})
    assert status == 200 and not problems
    assert json.loads(plain)["choices"][0]["message"]["content"] == streamed


def _family(root: int) -> dict[int, str]:
    """The processes below ``root`` (``buildah run``): pid -> command line."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    family, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    out = {}
    for pid in family - {root}:
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return out


def _server_rss(api: Api) -> int:
    """Resident memory of the server: every process below ``buildah run`` (the front and llama-server among them)."""
    family = {api.process.pid, *_family(api.process.pid)}
    total = 0
    for pid in family:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def _answered_in_full(status: int, stream: bytes) -> None:
    """A streamed answer the UI reads to its end: a 200, chunks it can parse, and a finish reason (an empty 200
    stream has none)."""
    assert status == 200, stream[:300]
    _, finish, problems = _read_like_the_ui(stream)
    assert finish in ("length", "stop") and not problems, stream[:500]


def test_a_load_of_chats_is_answered_in_full_and_memory_stays_flat(api: Api) -> None:
    """8 streamed chats at once, then 200 in a row of mixed sizes, some longer than the context: each is answered
    in full or refused with context_length_exceeded, none is an empty 200, the server stays up, and its memory
    after the first 20 stays within 10% (and 30 MB) of where it was then."""
    def chat(i: int) -> tuple[int, str, bytes]:
        return _post(api, _ui_chat([{"role": "user", "content": f"Person {i} asks a question."}]) | {"max_tokens": 24})

    with ThreadPoolExecutor(max_workers=8) as pool:
        for status, _, stream in pool.map(chat, range(8)):
            _answered_in_full(status, stream)
    rng = random.Random(13)
    too_long = "The quick brown fox jumps over the lazy dog. " * 600
    samples: list[int] = []
    started = time.monotonic()
    for i in range(200):
        if i % 25 == 7:
            status, _, body = _post(api, _ui_chat([{"role": "user", "content": too_long}]))
            assert status == 400 and json.loads(body)["error"]["code"] == "context_length_exceeded", body[:300]
        else:
            words = " ".join(rng.choice(("llama", "wheel", "cuda", "chat")) for _ in range(rng.randint(1, 300)))
            body = _ui_chat([{"role": "user", "content": words}]) | {"max_tokens": rng.randint(4, 48)}
            status, _, stream = _post(api, body)
            _answered_in_full(status, stream)
        if i % 20 == 19:
            samples.append(_server_rss(api))
    assert api.process.poll() is None
    print(f"200 mixed requests in {time.monotonic() - started:.0f} s; server memory every 20 requests (MB): "
          + ", ".join(f"{s / 1e6:.0f}" for s in samples))
    assert samples[0] > 0
    assert max(samples[1:]) <= samples[0] * 1.10 + 30e6, samples


def test_past_the_queue_a_chat_gets_503_with_retry_after(built: Built, models: Path, tmp_path: Path) -> None:
    """With PARALLEL=2 and MAX_QUEUE=1, six chats at once: two are answered while one waits; the rest are told at
    once to come back (503, Retry-After), never given an empty answer."""
    server = _started(built, models, tmp_path / "server.log", f"API_KEY={KEY}", "PARALLEL=2", "MAX_QUEUE=1")
    try:
        def chat(i: int) -> tuple[int, Any, bytes]:
            return _post_full(server, _ui_chat([{"role": "user", "content": f"Person {i}."}]) | {"max_tokens": 300})

        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(chat, range(6)))
    finally:
        _stop(server.container, server.process)
    busy = [(headers, body) for status, headers, body in answers if status == 503]
    assert 1 <= len(busy) <= 4, [a[0] for a in answers]
    for headers, body in busy:
        assert headers.get("Retry-After") == "10"
        error = json.loads(body)["error"]
        assert error["code"] == "server_busy" and "(PARALLEL=2, MAX_QUEUE=1)" in error["message"]
    for status, _, stream in answers:
        if status != 503:
            _answered_in_full(status, stream)
    assert "refused with 503" in (tmp_path / "server.log").read_text()


@pytest.fixture(scope="module")
def slower_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model slow enough here (about 40M parameters, a few hundred tokens/s) that a long answer outlasts a
    disconnect by seconds."""
    folder = tmp_path_factory.mktemp("slower")
    result = llamawheel("tiny-model", str(folder / "llama-2-7b-chat.bin"), "--type", "q8_0", "--layers", "8",
                        "--dim", "512", "--ff", "1408", "--heads", "8", "--kv-heads", "8", "--ctx", "4096")
    assert result.returncode == 0, result.stderr
    folder.chmod(0o755)
    (folder / "llama-2-7b-chat.bin").chmod(0o644)
    return folder


def _until_idle(api: Api, limit: float = 15.0) -> float:
    """Seconds until no slot is busy (llama-server's own count)."""
    started = time.monotonic()
    while _metrics(api)["llamacpp:requests_processing"] > 0:
        assert time.monotonic() - started < limit, "a slot stayed busy"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_client_that_goes_away_frees_its_slot(built: Built, slower_models: Path, tmp_path: Path) -> None:
    """A streamed chat asking for 3000 tokens whose client closes the connection after the first words: its slot
    is free at once and far fewer tokens were made. The same for a plain (unstreamed) request: llama-server
    looks at the connection of one every second, so it stops within about a second."""
    server = _started(built, slower_models, tmp_path / "server.log", f"API_KEY={KEY}")
    try:
        deadline = time.monotonic() + 120
        while _get(server.url("/health"), KEY)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        for streamed in (True, False):
            before = _metrics(server)["llamacpp:tokens_predicted_total"]
            body = json.dumps(_ui_chat([{"role": "user", "content": "Go on."}]) | {
                "max_tokens": 3000, "stream": streamed, "logit_bias": {"2": -100}}).encode()
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            if streamed:
                received = b""
                while b'"content":"' not in received:
                    received += sock.recv(4096)
            else:
                time.sleep(0.5)
            sock.close()
            took = _until_idle(server)
            metrics = _metrics(server)
            made = metrics["llamacpp:tokens_predicted_total"] - before
            print(f"{'streamed' if streamed else 'plain'}: slot free {took:.2f} s after the client went away, "
                  f"{made:.0f} of 3000 tokens made")
            assert made < 2000, f"{made:.0f} tokens were made for a client that had gone away"
            assert took < (1.0 if streamed else 3.0)
        assert metrics["llamawheel_requests_disconnected_total"] == 2
    finally:
        _stop(server.container, server.process)
    assert "the client went away; its answer is stopped" in (tmp_path / "server.log").read_text()


def _gone(pid: int, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_llama_server_never_outlives_the_front(built: Built, models: Path, tmp_path: Path, how: str) -> None:
    """The front stopped as docker stop does (SIGTERM), or killed outright (SIGKILL, no clean-up): llama-server,
    its child, ends with it either way."""
    server = _started(built, models, tmp_path / "server.log", f"API_KEY={KEY}")
    try:
        deadline = time.monotonic() + 120
        while _get(server.url("/health"), KEY)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        family = _family(server.process.pid)
        (llama,) = [pid for pid, cmd in family.items() if cmd.split(" ", 1)[0].endswith("/llama-server")]
        front = int(Path(f"/proc/{llama}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
        assert "llamawheel_runtime.serve" in family[front]
        os.kill(front, signal.SIGKILL if how == "killed" else signal.SIGTERM)  # the front alone
        assert _gone(llama), f"llama-server (pid {llama}) outlived the front ({how})"
        assert _gone(front), f"the front (pid {front}) did not stop on SIGTERM"
    finally:
        _stop(server.container, server.process)


def test_a_body_that_is_not_json_gets_a_400_and_no_traceback(api: Api) -> None:
    request = urllib.request.Request(api.url("/v1/chat/completions"), b'{"messages": [', {
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    error = json.loads(caught.value.read())["error"]
    assert error["type"] == "invalid_request_error" and error["message"].startswith("the request body is not JSON")
    assert "Traceback" not in api.log.read_text()


def test_the_log_says_slots_threads_and_queue(api: Api) -> None:
    log = api.log.read_text()
    assert "4 chat(s) at once, n_ctx 4096 each" in log and "thread(s): " in log and "request(s) queued" in log, \
        log[-2000:]
    assert "chat template llama2: the model has none" in log


def test_the_declared_health_check_answers(api: Api, built: Built) -> None:
    check = _config(built.tag)["Healthcheck"]["Test"]
    assert check[0] == "CMD"
    healthy = buildah("run", f"--env=PORT={api.port}", f"--env=API_KEY={KEY}", api.container, "--", *check[1:])
    assert f"healthy: http://127.0.0.1:{api.port}/v1/models lists {ALIAS}" in healthy.stdout
    wrong = buildah("run", f"--env=PORT={api.port}", "--env=API_KEY=sk-wrong", api.container, "--", *check[1:],
                    check=False)
    assert wrong.returncode == 1
    assert "answered 401" in wrong.stdout + wrong.stderr


# ----------------------------------------------------------------------------- llama-gpt's GGML v3 models

GGML_ID = "/models/llama-2-13b-chat.bin"


@pytest.fixture(scope="module")
def ggml_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder as llama-gpt's 13B compose file leaves it: a GGML v3 (ggjt, q8_0) llama-2-13b-chat.bin."""
    from llamawheel.mirror.profiles import load_profile
    from llamawheel.verify.installed import sdist_vocabulary

    from ..ggml_v3 import write_ggml_v3

    folder = tmp_path_factory.mktemp("ggml-models")
    write_ggml_v3(folder / "llama-2-13b-chat.bin", sdist_vocabulary(load_profile("default")))
    folder.chmod(0o755)
    (folder / "llama-2-13b-chat.bin").chmod(0o444)
    return folder


def test_a_ggml_v3_model_is_converted_into_the_cache_volume_served_and_reused(
    built: Built, ggml_models: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)  # a named volume takes the image's /cache (uid 1000); a bind mount keeps the host's mode
    before = sorted(p.name for p in ggml_models.iterdir())
    logs = []
    for start in ("first", "second"):
        log = tmp_path / f"{start}.log"
        server = _started(built, ggml_models, log, f"API_KEY={KEY}", volumes=(f"{cache}:/cache",))
        try:
            status, listed = _get(server.url("/v1/models"), KEY)
            assert status == 200 and [m["id"] for m in listed["data"]] == [GGML_ID]
            status, _, stream = _post(server, _ui_chat([{"role": "user", "content": "Hello!"}], GGML_ID)
                                      | {"max_tokens": 200})
            _answered_in_full(status, stream)
        finally:
            _stop(server.container, server.process)
        logs.append(log.read_text())
    assert "is GGML v3 (ggjt)" in logs[0] and "converting it once to GGUF" in logs[0], logs[0][-3000:]
    assert "converted /models/llama-2-13b-chat.bin in" in logs[0]
    assert "made on an earlier start" in logs[1] and "converting it once" not in logs[1], logs[1][-3000:]
    assert [p.suffix for p in cache.iterdir()] == [".gguf"]  # one finished file, nothing partial
    assert sorted(p.name for p in ggml_models.iterdir()) == before  # /models was only read
    print("first start:\n" + "\n".join(line for line in logs[0].splitlines() if line.startswith("llamawheel:")))


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap (apt-get install bubblewrap)")
def test_the_image_serves_from_a_read_only_root_with_no_capability(
    built: Built, ggml_models: Path, tmp_path: Path
) -> None:
    """What compose asks of the API container (read_only, tmpfs /tmp, cap_drop ALL, a cache volume): the image's
    own file system, mounted read-only under bubblewrap as uid 1000 with no capability, converts a GGML model into
    the one writable volume and answers a chat. (buildah run cannot make a root read-only.)"""
    container = buildah("from", "--pull-never", built.tag).stdout.strip()
    rootfs = buildah("mount", container).stdout.strip()
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    port = _free_port()
    config = _config(built.tag)
    env = [*config["Env"], f"PORT={port}", "HOST=127.0.0.1", "HOME=/home/llama"]
    log = tmp_path / "server.log"
    process = subprocess.Popen(
        ["bwrap", "--ro-bind", rootfs, "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
         "--ro-bind", str(ggml_models), "/models", "--bind", str(cache), "/cache", "--unshare-user", "--uid", "1000",
         "--gid", "1000", "--unshare-pid", "--unshare-ipc", "--cap-drop", "ALL", "--die-with-parent",
         "--chdir", "/home/llama", "/usr/bin/env", "-i", *env, *config["Entrypoint"]],
        stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, start_new_session=True)
    server = Api(container, port, ggml_models, process, log)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        status, _, stream = _post(server, _ui_chat([{"role": "user", "content": "Hello!"}], GGML_ID)
                                  | {"max_tokens": 16})
        _answered_in_full(status, stream)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        buildah("umount", container, check=False)
        buildah("rm", container, check=False)
    assert [p.suffix for p in cache.iterdir()] == [".gguf"]  # the volume took the conversion, nothing else
    assert "Read-only file system" not in log.read_text()


def test_a_ggml_v3_model_without_a_cache_volume_says_which_to_mount(
    built: Built, ggml_models: Path, tmp_path: Path
) -> None:
    out = _log_of_a_server_that_stops(built.tag, ggml_models, tmp_path)
    assert "llama-2-13b-chat.bin is GGML v3 (ggjt)" in out
    assert "is not a mounted volume" in out and "mount a writable volume there (-v llama-cache:/cache)" in out
    assert "Traceback" not in out


def _log_of_a_server_that_stops(tag: str, models: Path, tmp_path: Path, *env: str) -> str:
    """Start the image's entry point on ``models`` (with a key, unless ``env`` is given); it must exit by itself,
    with a non-zero status."""
    log = tmp_path / "server.log"
    container, process = _serve(tag, models, log, _free_port(), *(env or (f"API_KEY={KEY}",)))
    try:
        assert process.wait(timeout=60) != 0
    finally:
        _stop(container, process)
    return log.read_text()


def test_a_missing_model_stops_with_a_message_not_a_traceback(built: Built, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    empty.chmod(0o755)
    out = _log_of_a_server_that_stops(built.tag, empty, tmp_path)
    assert "ERROR no GGUF or GGML v3 model under /models: mount a folder holding one (-v /path/to/models:/models)" \
        in out
    assert "Traceback" not in out


def test_a_models_folder_the_server_cannot_read_is_named(built: Built, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir()
    private.chmod(0o700)  # root's, unreadable to uid 1000: the usual mistake with a mounted folder
    out = _log_of_a_server_that_stops(built.tag, private, tmp_path)
    assert "ERROR /models cannot be read by this server's user (uid 1000): make the folder you mount readable" in out


OFFLINE_SIDE = r'''
set -eu
ip link set lo up
cd "$1"
sha256sum -c llamawheel-index.tar.gz.sha256
tar -xzf llamawheel-index.tar.gz
cd llamawheel-index
# an empty image store of its own: the machine that never saw the image
store="--root $2/storage --runroot $2/run --storage-driver vfs"
image=$(buildah $store pull --quiet "oci-archive:images/$3")
eval "$5"   # OFFLINE.txt's line that makes this site's own key
set -a; . compose/.env; set +a
buildah $store tag "$image" "$API_IMAGE"
container=$(buildah $store from --pull-never "$API_IMAGE")
buildah $store run --env=PORT=18000 "--env=API_KEY=$API_KEY" -v "$4:/models:ro" "$container" -- \
    python3 -m llamawheel_runtime.serve > "$2/server.log" 2>&1 &
server=$!
for i in $(seq 1 240); do
    python3 -c 'import socket; socket.create_connection(("127.0.0.1", 18000), timeout=1)' 2>/dev/null && break
    sleep 0.5
done
python3 - <<'PY'
import json, os, urllib.request
req = urllib.request.Request("http://127.0.0.1:18000/v1/chat/completions", method="POST",
    data=json.dumps({"model": "/models/llama-2-7b-chat.bin", "max_tokens": 8,
                     "messages": [{"role": "user", "content": "Hello"}]}).encode(),
    headers={"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["API_KEY"]})
answer = json.load(urllib.request.urlopen(req, timeout=120))
print("ANSWER", json.dumps(answer["choices"][0]["message"]))
PY
[ -z "$(ip route show)" ] && [ "$(ip -o link show | wc -l)" = 1 ] && echo "NO NETWORK" || echo "NETWORK REACHABLE"
kill $server; wait $server || true
buildah $store rm "$container" >/dev/null
'''


def test_an_offline_bundle_unpacks_loads_and_answers_with_no_network(
    built: Built, models: Path, tmp_path: Path
) -> None:
    """``index bundle`` with the image archive and the compose files; on the other side, in a network namespace
    with nothing but loopback: check, unpack, load the image into an empty store, serve, chat."""
    result = llamawheel("index", "bundle", "--index", str(built.index), "--out", str(tmp_path / "carry" /
                        "llamawheel-index.tar.gz"), "--image-archive", str(built.archive))
    assert result.returncode == 0, result.stderr
    said = result.stdout
    assert f"podman load -i images/{built.archive.name}" in said and "compose/.env" in said
    assert "no --ui-archive" in result.stderr  # says the UI still comes from a registry
    with tarfile.open(tmp_path / "carry" / "llamawheel-index.tar.gz") as tar:
        names = set(tar.getnames())
        env = tar.extractfile("llamawheel-index/compose/.env").read().decode()  # type: ignore[union-attr]
    assert {f"llamawheel-index/images/{built.archive.name}", "llamawheel-index/compose/compose.yaml",
            "llamawheel-index/OFFLINE.txt", "llamawheel-index/cpu/simple/index.html"} <= names
    assert env == f"API_IMAGE={built.tag}\n"  # no key: the bundle goes to many sites; each makes its own
    (make_key,) = [line.strip() for line in said.splitlines() if "an API key of this site's own" in line]
    side = tmp_path / "side"
    side.mkdir()
    script = tmp_path / "offline.sh"
    script.write_text(OFFLINE_SIDE)
    run = subprocess.run(["unshare", "--net", "bash", str(script), str(tmp_path / "carry"), str(side),
                          built.archive.name, str(models / "tiny"), make_key], capture_output=True, text=True,
                         timeout=900,
                         env={**os.environ, **ENV})
    log = (side / "server.log").read_text() if (side / "server.log").exists() else ""
    assert run.returncode == 0, run.stdout + run.stderr + log
    assert "NO NETWORK" in run.stdout  # the namespace had loopback only: no other link, no route
    answer = json.loads(run.stdout.split("ANSWER ", 1)[1].splitlines()[0])
    assert answer["role"] == "assistant" and answer["content"], run.stdout
