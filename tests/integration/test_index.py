"""The private index for real: a synthetic llama-cpp-python wheel is published with its dependency
closure fetched by a real ``pip download`` through this machine's pip configuration (for the running
Python only), then a real pip in a fresh virtual environment installs ``llama-cpp-python[server]`` from it
with no other index and no network: from ``file://``, from ``llamawheel index serve`` on loopback, with
``--require-hashes``, and from an unpacked bundle. A publish killed with SIGKILL leaves a valid index."""

from __future__ import annotations

import base64
import email.policy
import hashlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from email.parser import BytesParser
from pathlib import Path

import pytest

from llamawheel.core.compat import tomllib
from llamawheel.publish.index_pages import parse_links

from ..index_wheels import index_server, make_wheel
from .conftest import ROOT, llamawheel

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing answers, so any network access fails


def offline_env(**extra: str) -> dict[str, str]:
    """No pip configuration file and no PIP_* variable of this machine: pip knows only what the command says."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and not k.lower().endswith("_proxy")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def fresh_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True, timeout=300)
    return path / "bin" / "python"


def pip_install(python: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", "install", "--no-cache-dir", *args],
        capture_output=True, text=True, env=env or offline_env(), timeout=600,
    )


def installed_version(python: Path, project: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({project!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index holding the synthetic wheel and its real closure for this Python (machine's pip config)."""
    base = tmp_path_factory.mktemp("index")
    wheel = make_wheel(base / "built")
    start = time.monotonic()
    result = llamawheel("publish", str(wheel), "--index", str(base / "wheels"), "--python-version", PYTHON)
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"publish with the closure for Python {PYTHON}: {time.monotonic() - start:.1f}s")
    assert "cpu: 4 added" in result.stdout, result.stdout
    assert f'pip install --index-url {(base / "wheels").resolve().as_uri()}/cpu/simple "llama-cpp-python[server]"' in (
        result.stdout
    )
    return base / "wheels"


def test_closure_holds_the_dependencies_and_the_server_extra(published: Path) -> None:
    projects = [a["#text"] for a in parse_links((published / "cpu" / "simple" / "index.html").read_text())]
    assert projects == ["diskcache", "llama-cpp-python", "pyyaml", "typing-extensions"]
    check = llamawheel("index", "check", str(published))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ok: every link resolves" in check.stdout


def test_pip_installs_offline_from_file_index(published: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv")
    url = f"{published.resolve().as_uri()}/cpu/simple"
    result = pip_install(python, "--proxy", DEAD_PROXY, "--index-url", url, "llama-cpp-python[server]")
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_version(python, "llama-cpp-python") == "0.3.36+cpu"
    assert installed_version(python, "PyYAML")  # the server extra came along
    subprocess.run([str(python), "-c", "import llama_cpp, yaml, diskcache, typing_extensions"], check=True)

    absent = pip_install(python, "--proxy", DEAD_PROXY, "--index-url", url, "six")
    assert absent.returncode != 0, "pip found a package the index does not hold: it is not isolated"
    assert "No matching distribution found for six" in absent.stdout + absent.stderr


@pytest.fixture
def server(published: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``llamawheel index serve`` on a free loopback port (port 0: it prints the one it got)."""
    log = tmp_path / "serve.log"
    with index_server(published, log) as url:
        yield url, log


def test_pip_installs_from_the_http_server(server: tuple[str, Path], tmp_path: Path) -> None:
    url, log = server
    python = fresh_venv(tmp_path / "venv")
    # Every host but the loopback server goes through a proxy that does not answer.
    env = offline_env(http_proxy=DEAD_PROXY, https_proxy=DEAD_PROXY, HTTP_PROXY=DEAD_PROXY, HTTPS_PROXY=DEAD_PROXY,
                      no_proxy="127.0.0.1", NO_PROXY="127.0.0.1")
    result = pip_install(python, "--index-url", f"{url}/cpu/simple", "llama-cpp-python[server]", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_version(python, "llama-cpp-python") == "0.3.36+cpu"
    served = log.read_text()
    assert '"GET /cpu/simple/llama-cpp-python/ HTTP/1.1" 200' in served
    assert ".whl.metadata HTTP/1.1\" 200" in served, "pip did not use the PEP 658 metadata files"
    assert " 404 " not in served, served


def test_require_hashes_installs_the_whole_closure(published: Path, tmp_path: Path) -> None:
    simple = published / "cpu" / "simple"
    lines = []
    for project in [a["#text"] for a in parse_links((simple / "index.html").read_text())]:
        by_version: dict[str, list[str]] = {}
        for link in parse_links((simple / project / "index.html").read_text()):
            version = link["#text"].split("-")[1]
            by_version.setdefault(version, []).append(link["href"].split("#sha256=")[1])
        for version, hashes in by_version.items():
            name = "llama-cpp-python[server]" if project == "llama-cpp-python" else project
            lines.append(f"{name}=={version} " + " ".join(f"--hash=sha256:{h}" for h in hashes))
    assert len(lines) == 4
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(lines) + "\n")
    python = fresh_venv(tmp_path / "venv")
    url = f"{published.resolve().as_uri()}/cpu/simple"
    result = pip_install(python, "--proxy", DEAD_PROXY, "--index-url", url, "--require-hashes", "-r", str(requirements))
    assert result.returncode == 0, result.stdout + result.stderr
    assert installed_version(python, "llama-cpp-python") == "0.3.36+cpu"

    tampered = tmp_path / "tampered.txt"
    tampered.write_text(requirements.read_text().replace(lines[0].split("sha256:")[1][:8], "00000000", 1))
    bad = pip_install(fresh_venv(tmp_path / "venv2"), "--proxy", DEAD_PROXY, "--index-url", url, "--require-hashes",
                      "-r", str(tampered))
    assert bad.returncode != 0 and "DO NOT MATCH THE HASHES" in bad.stdout + bad.stderr


def test_bundle_unpacked_elsewhere_is_an_index_pip_installs_from(published: Path, tmp_path: Path) -> None:
    out = tmp_path / "carry" / "site.tar.gz"
    result = llamawheel("index", "bundle", "--index", str(published), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sha256sum -c site.tar.gz.sha256" in result.stdout
    recorded = (tmp_path / "carry" / "site.tar.gz.sha256").read_text()
    assert recorded == f"{hashlib.sha256(out.read_bytes()).hexdigest()}  site.tar.gz\n"
    verify = subprocess.run(["sha256sum", "-c", "site.tar.gz.sha256"], cwd=out.parent, capture_output=True, text=True)
    assert verify.returncode == 0 and "site.tar.gz: OK" in verify.stdout

    site = tmp_path / "offline-site"
    site.mkdir()
    subprocess.run(["tar", "-xzf", str(out)], cwd=site, check=True)
    check = llamawheel("index", "check", str(site / "llamawheel-index"))
    assert check.returncode == 0, check.stdout + check.stderr
    python = fresh_venv(tmp_path / "venv")
    url = f"{(site / 'llamawheel-index').as_uri()}/cpu/simple"
    installed = pip_install(python, "--proxy", DEAD_PROXY, "--index-url", url, "llama-cpp-python[server]")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert installed_version(python, "llama-cpp-python") == "0.3.36+cpu"
    assert 'file://$PWD/llamawheel-index/cpu/simple' in (site / "llamawheel-index" / "index.html").read_text()


def test_publish_killed_with_sigkill_leaves_a_valid_index(tmp_path: Path) -> None:
    root = tmp_path / "wheels"
    first = make_wheel(tmp_path / "built")
    baseline = llamawheel("publish", str(first), "--index", str(root), "--no-closure")
    assert baseline.returncode == 0, baseline.stderr
    current = os.readlink(root / "cpu" / "simple")
    second = make_wheel(tmp_path / "built", version="0.3.37+cpu")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamawheel", "publish", str(second), "--index", str(root), "--python-version", PYTHON],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 20
    seen = "nothing new after 20s"
    while time.monotonic() < deadline and proc.poll() is None:
        fresh = [p.name for p in (root / "cpu").glob(".generation-*") if p.name != current]
        if fresh:
            seen = f"new generation {fresh[0]}"
            break
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    print(f"killed the publish (exit {proc.returncode}) after: {seen}")
    assert proc.returncode == -signal.SIGKILL, "the publish finished before it could be killed"

    check = llamawheel("index", "check", str(root))
    assert check.returncode == 0, check.stdout + check.stderr
    names = [a["#text"] for a in parse_links((root / "cpu" / "simple" / "llama-cpp-python" / "index.html").read_text())]
    assert names in ([first.name], sorted([first.name, second.name]))


class _UploadHandler(http.server.BaseHTTPRequestHandler):
    """The legacy upload API of an index server: a multipart POST with the file in the 'content' field."""

    uploads: list[dict[str, object]]
    expected_auth: str

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        content = fields["content"]
        self.uploads.append({
            "auth": self.headers.get("Authorization"),
            "filename": content.get_filename(),
            "data": content.get_payload(decode=True),
            "sha256_digest": fields["sha256_digest"].get_content().strip(),
        })
        ok = self.headers.get("Authorization") == self.expected_auth
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def twine_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """twine installed into a folder of its own (the development environment stays without it)."""
    target = tmp_path_factory.mktemp("twine-site")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "twine>=5"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def test_upload_goes_through_twine_with_credentials_from_the_environment(twine_site: Path, tmp_path: Path) -> None:
    uploads: list[dict[str, object]] = []
    auth = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    handler = type("Handler", (_UploadHandler,), {"uploads": uploads, "expected_auth": auth})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/legacy/"
    wheel = make_wheel(tmp_path / "built")
    env = {"PYTHONPATH": str(twine_site), "HOME": str(tmp_path), "TWINE_USERNAME": "alice",
           "TWINE_PASSWORD": "s3cret", "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    try:
        result = llamawheel("index", "upload", str(wheel), "--repository-url", url, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(uploads) == 1
        assert uploads[0]["auth"] == auth
        assert uploads[0]["filename"] == wheel.name
        assert uploads[0]["data"] == wheel.read_bytes()
        assert uploads[0]["sha256_digest"] == hashlib.sha256(wheel.read_bytes()).hexdigest()

        refused = llamawheel("index", "upload", str(wheel), "--repository-url", url, env={**env, "TWINE_PASSWORD": "x"})
        assert refused.returncode == 10, refused.stdout + refused.stderr
        assert f"ERROR twine upload to {url} failed" in refused.stderr
        assert "TIP credentials come from TWINE_USERNAME/TWINE_PASSWORD" in refused.stderr
    finally:
        server.shutdown()


def test_closure_follows_markers_of_the_target_python(tmp_path: Path) -> None:
    """pip evaluates markers for the Python it runs on: a dependency only the target Python needs must
    still land in the index (llamawheel walks the requirements again with the target's markers)."""
    target = "3.12" if PYTHON == "3.10" else "3.10"
    wheel = make_wheel(tmp_path / "built", requires=(f'exceptiongroup>=1.0 ; python_version == "{target}"',), extras=())
    root = tmp_path / "wheels"
    result = llamawheel("publish", str(wheel), "--index", str(root), "--python-version", target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Python {target} also needs exceptiongroup>=1.0" in result.stderr
    projects = [a["#text"] for a in parse_links((root / "cpu" / "simple" / "index.html").read_text())]
    assert {"exceptiongroup", "llama-cpp-python"} <= set(projects)


@pytest.fixture(scope="module")
def pypiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real pypiserver (with passlib, for its htpasswd authentication) on loopback."""
    base = tmp_path_factory.mktemp("pypiserver")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "pypiserver", "passlib"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    packages = base / "packages"
    packages.mkdir()
    # htpasswd with one user, written by passlib itself
    subprocess.run([str(venv / "bin" / "python"), "-c",
                    "import sys; from passlib.apache import HtpasswdFile as H; h = H(sys.argv[1], new=True); "
                    "h.set_password('alice', 's3cret'); h.save()", str(base / "htpasswd")], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(venv / "bin" / "pypi-server"), "run", "-i", "127.0.0.1", "-p", str(port),
                             "-P", str(base / "htpasswd"), "-a", "update", str(packages)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/simple/", timeout=2).read()
            break
        except OSError:
            time.sleep(0.3)
    yield url, packages
    proc.terminate()
    proc.wait(timeout=10)


def test_upload_to_a_real_pypiserver(twine_site: Path, pypiserver: tuple[str, Path], tmp_path: Path) -> None:
    url, packages = pypiserver
    wheel = make_wheel(tmp_path / "built")
    env = {"PYTHONPATH": str(twine_site), "HOME": str(tmp_path), "TWINE_USERNAME": "alice",
           "TWINE_PASSWORD": "s3cret", "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    result = llamawheel("index", "upload", str(wheel), "--repository-url", url + "/", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (packages / wheel.name).read_bytes() == wheel.read_bytes()
    refused = llamawheel("index", "upload", str(wheel), "--repository-url", url + "/",
                         env={**env, "TWINE_PASSWORD": "wrong"})
    assert refused.returncode == 10
    # and pip finds it there
    page = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp_path / "dl"),
                           "--index-url", url + "/simple/", "llama-cpp-python==0.3.36+cpu"],
                          capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                               if not k.startswith("PIP_")} | {
                              "PIP_CONFIG_FILE": os.devnull})
    assert page.returncode == 0, page.stdout + page.stderr


# ----------------------------------------------------------------------------- the lock (PEP 751)


def lock_of(root: Path) -> Path:
    return root / "cpu" / "simple" / f"pylock.cp{PYTHON.replace('.', '')}-x86_64.toml"


def locked_hashes(lock: Path) -> dict[str, str]:
    """Each locked wheel's file name with its sha256, checked against the file its path names."""
    data = tomllib.loads(lock.read_text())
    assert data["lock-version"] == "1.0" and data["created-by"] == "llamawheel"
    assert data["requires-python"] == f"=={PYTHON}.*"
    hashes = {}
    for package in data["packages"]:
        (wheel,) = package["wheels"]
        assert wheel["name"].split("-")[1] == package["version"]
        stored = lock.parent / wheel["path"]
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == wheel["hashes"]["sha256"], wheel["name"]
        assert stored.stat().st_size == wheel["size"]
        hashes[wheel["name"]] = wheel["hashes"]["sha256"]
    return hashes


def page_hashes(root: Path) -> dict[str, str]:
    simple = root / "cpu" / "simple"
    return {link["#text"]: link["href"].split("#sha256=")[1]
            for project in [a["#text"] for a in parse_links((simple / "index.html").read_text())]
            for link in parse_links((simple / project / "index.html").read_text())}


def test_publish_writes_a_lock_whose_hashes_match_the_index(published: Path) -> None:
    locked = locked_hashes(lock_of(published))
    assert {name.split("-")[0].lower() for name in locked} == {"diskcache", "pyyaml", "typing_extensions"}
    pages = page_hashes(published)
    assert all(pages[name] == sha for name, sha in locked.items()), (locked, pages)
    check = llamawheel("index", "check", str(published))
    assert check.returncode == 0 and "1 lock(s) match the files" in check.stdout, check.stdout + check.stderr


def test_a_second_publish_takes_the_locked_files_without_resolving(tmp_path: Path) -> None:
    root = tmp_path / "wheels"
    first = make_wheel(tmp_path / "built")
    result = llamawheel("publish", str(first), "--index", str(root), "--python-version", PYTHON)
    assert result.returncode == 0, result.stdout + result.stderr
    locked = locked_hashes(lock_of(root))
    assert len(locked) == 3

    # A new build with the same requirements, published with pip cut off from every index: only the lock
    # (files taken from the index's own store, checked by sha256) can make this work.
    second = make_wheel(tmp_path / "built", version="0.3.37+cpu")
    (tmp_path / "nothing").mkdir()
    cut_off = offline_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "nothing"), http_proxy=DEAD_PROXY,
                          https_proxy=DEAD_PROXY)
    again = llamawheel("publish", str(second), "--index", str(root), "--python-version", PYTHON, env=cut_off)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "taking the locked closure for Python" in again.stderr and "not resolving" in again.stderr
    assert "cpu: 1 added, 0 replaced, 3 already there" in again.stdout, again.stdout
    assert locked_hashes(lock_of(root)) == locked
    assert {n: s for n, s in page_hashes(root).items() if not n.startswith("llama_cpp")} == locked
    roots = tomllib.loads(lock_of(root).read_text())["tool"]["llamawheel"]["roots"]
    assert roots == sorted(f"{w.name}[server]" for w in (first, second))


def test_refreshing_the_lock_resolves_anew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llamawheel.core.errors import DownloadError
    from llamawheel.publish import index

    root = tmp_path / "wheels"
    wheel = make_wheel(tmp_path / "built")
    index.publish([wheel], index_root=root, python_versions=[PYTHON])
    locked = locked_hashes(lock_of(root))
    (tmp_path / "nothing").mkdir()
    for key, value in offline_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "nothing")).items():
        monkeypatch.setenv(key, value)
    index.publish([wheel], index_root=root, python_versions=[PYTHON])  # the lock: no index needed
    with pytest.raises(DownloadError):  # resolving needs an index, which pip is cut off from
        index.publish([wheel], index_root=root, python_versions=[PYTHON], refresh_lock=True)
    assert locked_hashes(lock_of(root)) == locked  # a failed refresh leaves the index as it was


def test_a_locked_file_missing_from_the_store_is_fetched_by_its_locked_hash(tmp_path: Path) -> None:
    root = tmp_path / "wheels"
    wheel = make_wheel(tmp_path / "built")
    assert llamawheel("publish", str(wheel), "--index", str(root), "--python-version", PYTHON).returncode == 0
    locked = locked_hashes(lock_of(root))
    (name,) = [n for n in locked if n.startswith("diskcache-")]
    stored = root / "cpu" / "files" / locked[name] / name
    good = stored.read_bytes()

    # The mirror now serves other bytes under that name: the publish refuses them, naming both hashes.
    stored.unlink()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / name).write_bytes(good + b"\0")
    served = offline_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(mirror))
    refused = llamawheel("publish", str(wheel), "--index", str(root), "--python-version", PYTHON, env=served)
    assert refused.returncode == 5, refused.stdout + refused.stderr
    assert "1 locked file(s) are not in the index: fetching exactly those" in refused.stderr
    bad_sha = hashlib.sha256(good + b"\0").hexdigest()
    assert f"{name} (from {(mirror / name).as_uri()}): expected sha256 {locked[name]}, got {bad_sha}" in (
        refused.stderr), refused.stderr

    # The right bytes: fetched with --require-hashes, stored again, and the index is whole.
    (mirror / name).write_bytes(good)
    fixed = llamawheel("publish", str(wheel), "--index", str(root), "--python-version", PYTHON, env=served)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert stored.read_bytes() == good
    assert locked_hashes(lock_of(root)) == locked
    check = llamawheel("index", "check", str(root))
    assert check.returncode == 0, check.stdout + check.stderr
