"""A token in the pip index URL stays out of everything llamawheel writes: a real ``llamawheel publish`` fetches
a wheel's dependency through a mirror profile whose index (a real PEP 503 server on loopback) wants a user and a
token and links its files with a signed query, and the token is in no file of the index, no record and no line
the command printed. The CI workflow lets only the job that publishes the release write to the repository."""

from __future__ import annotations

import base64
import hashlib
import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from ..index_wheels import make_wheel
from .conftest import ROOT, llamawheel

SECRET = "s3cr3t-token"
USER = "builder"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


class _PrivateIndex(http.server.BaseHTTPRequestHandler):
    """A private index: every request needs ``USER:SECRET``; file links carry the token as a signed query, the
    way an object store's presigned links do."""

    files: ClassVar[dict[str, bytes]] = {}
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="private"')
            self.end_headers()
            return
        path = self.path.split("?", 1)[0]
        if path.startswith("/files/") and path[len("/files/"):] in self.files:
            self._answer(self.files[path[len("/files/"):]], "application/octet-stream")
        elif path.rstrip("/") == "/simple/tinydep":
            links = "".join(f'<a href="/files/{name}?token={SECRET}#sha256={hashlib.sha256(data).hexdigest()}">'
                            f"{name}</a>\n" for name, data in self.files.items())
            self._answer(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode(), "text/html")
        else:
            self.send_error(404)

    def _answer(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def private_index(tmp_path: Path) -> Iterator[str]:
    """The index URL, with its user and token in it, as a user would put it in a mirror profile."""
    dep = make_wheel(tmp_path / "dep", name="tinydep", version="1.0", platform="any", requires=(), extras=(),
                     package="tinydep")

    class Handler(_PrivateIndex):
        files: ClassVar[dict[str, bytes]] = {dep.name: dep.read_bytes()}
        seen: ClassVar[list[str]] = []

    handler = Handler
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{USER}:{SECRET}@127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()
    assert any(p.startswith("/files/tinydep-1.0") for p in handler.seen), handler.seen


def test_the_index_token_is_in_nothing_publish_writes(private_index: str, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "built", requires=("tinydep>=1.0",), extras=())
    profile = tmp_path / "private.toml"
    profile.write_text(f'description = "a private index"\npypi = "{private_index}"\n')
    out = tmp_path / "wheels"
    # A pip setting of this machine that the profile's index sets aside (llamawheel names the index when it says so).
    result = llamawheel("publish", str(wheel), "--index", str(out), "--mirror", str(profile),
                        "--python-version", PYTHON, env={"PIP_NO_CACHE_DIR": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cpu: 2 added" in result.stdout, result.stdout
    assert f"http://***@127.0.0.1:{private_index.rsplit(':', 1)[1]}" in result.stderr  # the index, named safely
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name.startswith("tinydep-1.0") for p in written)  # the dependency came through the index
    assert any("?token=***" in p.read_text(errors="replace") for p in written)  # and its link was recorded
    leaks = [str(p) for p in written if SECRET.encode() in p.read_bytes()]
    assert not leaks, f"the token is in {leaks}"
    assert SECRET not in result.stdout and SECRET not in result.stderr


def test_only_the_publish_job_may_write_to_the_repository() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "wheels.yml").read_text())
    assert workflow["permissions"] == {"contents": "read"}
    writers = {name for name, job in workflow["jobs"].items()
               if "write" in (job.get("permissions") or {}).values() or job.get("permissions") == "write-all"}
    assert writers == {"publish"}
    assert workflow["jobs"]["publish"]["permissions"] == {"contents": "write"}
