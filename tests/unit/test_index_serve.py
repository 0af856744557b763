"""``llamawheel index serve`` for real, on a loopback port: it serves the pages and the files they link (pip
downloads from it), and nothing else: no folder listings, no hidden or internal entries, nothing a symlink leads
to outside the index; a request line's control characters are escaped in its log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamawheel.publish import index

from ..index_wheels import index_server, make_wheel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of one synthetic wheel (no dependencies), with the leftovers and traps the server must hide."""
    base = tmp_path_factory.mktemp("serve")
    wheel = make_wheel(base / "built", requires=(), extras=())
    index.publish([wheel], index_root=base / "wheels", with_closure=False)
    cpu = base / "wheels" / "cpu"
    (cpu / ".incoming-x").mkdir()
    (cpu / ".incoming-x" / "partial.whl").write_bytes(b"half a wheel")
    secret = base / "outside.txt"
    secret.write_text("outside the index\n")
    (cpu / "leak.txt").symlink_to(secret)
    (cpu / "passwd").symlink_to("/etc/passwd")
    (cpu / "outside").symlink_to(base)
    (cpu / "simple" / "trap").mkdir()
    (cpu / "simple" / "trap" / "index.html").symlink_to(secret)
    return base / "wheels"


@pytest.fixture(scope="module")
def server(published: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The real command on a free loopback port (port 0: it prints the one it got); its log in a file."""
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with index_server(published, log) as url:
        yield url, log


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def raw_request(url: str, target: bytes) -> bytes:
    """Send ``GET <target> HTTP/1.0`` as bytes, as no HTTP client would (control characters included)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.0\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def logged(log: Path, needle: str) -> str:
    """The server's log once it holds ``needle`` (it is written by another process)."""
    deadline = time.monotonic() + 10
    while needle not in (text := log.read_text(errors="replace")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return text


def test_the_pages_and_files_pip_needs_are_served(server: tuple[str, Path]) -> None:
    url, _ = server
    status, page = get(f"{url}/cpu/simple/llama-cpp-python/")
    assert status == 200
    href = page.decode().split('href="', 1)[1].split('"', 1)[0].split("#", 1)[0]
    wheel_url = urllib.parse.urljoin(f"{url}/cpu/simple/llama-cpp-python/", href)
    status, body = get(wheel_url)
    assert status == 200 and body[:2] == b"PK"
    assert get(wheel_url + ".metadata")[0] == 200
    assert get(f"{url}/cpu/simple/")[0] == 200
    assert get(f"{url}/")[0] == 200  # the top page: the variants and their pip commands


@pytest.mark.parametrize("path", ["/cpu/", "/cpu/files/", "/cpu/files", "/cpu/simple/../files/"])
def test_a_folder_without_an_index_page_is_not_listed(server: tuple[str, Path], path: str) -> None:
    url, _ = server
    status, body = get(url + path)
    assert status == 404, body
    assert b"Directory listing" not in body and b".whl" not in body


@pytest.mark.parametrize("path", [
    "/cpu/.incoming-x/", "/cpu/.incoming-x/partial.whl", "/cpu/simple/.llamawheel.json", "/cpu/%2eincoming-x/",
    "/.publish.lock",
])
def test_hidden_and_internal_entries_are_not_found(server: tuple[str, Path], published: Path, path: str) -> None:
    url, _ = server
    assert get(url + path)[0] == 404


def test_a_generation_folder_is_not_found(server: tuple[str, Path], published: Path) -> None:
    url, _ = server
    (generation,) = [p.name for p in (published / "cpu").iterdir() if p.name.startswith(".generation-")]
    assert get(f"{url}/cpu/{generation}/")[0] == 404
    assert get(f"{url}/cpu/{generation}/index.html")[0] == 404
    assert get(f"{url}/cpu/simple/index.html")[0] == 200  # the same page, through the link pip follows


@pytest.mark.parametrize("path", ["/cpu/leak.txt", "/cpu/passwd", "/cpu/outside/outside.txt", "/cpu/outside/",
                                  "/cpu/simple/trap/"])
def test_a_symlink_out_of_the_index_is_not_followed(server: tuple[str, Path], path: str) -> None:
    url, _ = server
    status, body = get(url + path)
    assert status == 404
    assert b"outside the index" not in body and b"root:" not in body


def test_control_characters_in_a_request_are_escaped_in_the_log(server: tuple[str, Path]) -> None:
    url, log = server
    answer = raw_request(url, b"/\x1b[31mred\x1b[0m\x07")
    assert answer.startswith(b"HTTP/1.0 404")
    text = logged(log, "red\\x1b[0m")
    assert "GET /\\x1b[31mred\\x1b[0m\\x07 HTTP/1.0" in text
    raw_request(url, b"/%1b[32mgreen")
    text = logged(log, "%1b[32mgreen")
    assert "GET /%1b[32mgreen HTTP/1.0" in text
    assert "\x1b" not in text and "\x07" not in text


def test_pip_downloads_from_the_served_index(server: tuple[str, Path], tmp_path: Path) -> None:
    url, log = server
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and not k.lower().endswith("_proxy")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform",
         "manylinux_2_17_x86_64", "-d", str(tmp_path), "--index-url", f"{url}/cpu/simple", "llama-cpp-python"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in tmp_path.glob("*.whl")] == [
        "llama_cpp_python-0.3.36+cpu-py3-none-manylinux_2_17_x86_64.whl"]
    assert '"GET /cpu/simple/llama-cpp-python/ HTTP/1.1" 200' in logged(log, "/cpu/simple/llama-cpp-python/")
