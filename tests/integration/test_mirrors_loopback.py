"""A real HTTP server on loopback stands in as a mirror: an unreachable one named, a genuine download through
it, and a tampered sdist that the hash check must refuse (``mirrors check`` by feature: test_reach.py)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamawheel.building import cache as cache_mod
from llamawheel.building import sdist
from llamawheel.mirror import profiles
from llamawheel.recipe import catalog

from .conftest import ROOT, llamawheel


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        self.requests.append(self.path)


class Mirror:
    """A static folder served over HTTP on 127.0.0.1, recording every request path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        handler = type("Handler", (_Handler,), {"requests": self.requests})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add_files(self, project: str, files: list[Path]) -> None:
        """Publish files under simple/<project>/ with sha256 fragments (PEP 503)."""
        folder = self.root / "simple" / project
        folder.mkdir(parents=True, exist_ok=True)
        links = []
        for f in files:
            (folder / f.name).write_bytes(f.read_bytes())
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            links.append(f'<a href="{f.name}#sha256={digest}">{f.name}</a>')
        (folder / "index.html").write_text("<html><body>" + "\n".join(links) + "</body></html>")


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    m = Mirror(tmp_path / "mirror")
    (m.root / "debian" / "dists" / "bookworm").mkdir(parents=True)
    (m.root / "debian" / "dists" / "bookworm" / "Release").write_text("Origin: Debian\nSuite: stable\n")
    (m.root / "simple" / "pip").mkdir(parents=True)
    (m.root / "simple" / "pip" / "index.html").write_text("<html><body></body></html>")
    m.thread.start()
    yield m
    m.server.shutdown()


def _profile(tmp_path: Path, **urls: str) -> Path:
    path = tmp_path / "loopback.toml"
    path.write_text('description = "test mirror on loopback"\n' + "".join(f'{k} = "{v}"\n' for k, v in urls.items()))
    return path


def _isolated_pip_env(cache: Path) -> dict[str, str]:
    """Only the profile's index: no machine pip configuration, no extra indexes or find-links."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", LLAMAWHEEL_CACHE=str(cache))
    return env


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_mirror_is_named(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/simple/"
    result = llamawheel("mirrors", "check", str(_profile(tmp_path, pypi=url)), "--timeout", "2")
    assert result.returncode == 4
    assert "FAIL pypi" in result.stdout and url in result.stdout and "unreachable" in result.stdout
    assert "cannot serve even the CPU wheels" in result.stderr


@pytest.fixture(scope="module")
def genuine_sdist() -> Path:
    """The real llama-cpp-python sdist, fetched through this machine's own pip (and cached)."""
    recipe = catalog.cpu_recipe()
    return sdist.fetch(recipe.llama_cpp_python, profiles.load_profile("default"))


@pytest.fixture(scope="module")
def build_backend_wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """What pip needs to read an sdist's metadata: scikit-build-core and its dependencies."""
    dest = tmp_path_factory.mktemp("backend")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(dest),
                    "scikit-build-core[pyproject]>=0.9.2"], check=True)
    return sorted(dest.glob("*.whl"))


def _serve_backend(mirror: Mirror, wheels: list[Path]) -> None:
    by_project: dict[str, list[Path]] = {}
    for w in wheels:
        project = w.name.split("-")[0].lower().replace("_", "-")
        by_project.setdefault(project, []).append(w)
    for project, files in by_project.items():
        mirror.add_files(project, files)


def test_sdist_is_fetched_through_the_profile_mirror(mirror: Mirror, tmp_path: Path, genuine_sdist: Path,
                                                     build_backend_wheels: list[Path]) -> None:
    mirror.add_files("llama-cpp-python", [genuine_sdist])
    _serve_backend(mirror, build_backend_wheels)
    profile = _profile(tmp_path, pypi=f"{mirror.url}/simple/")
    cache = tmp_path / "cache"
    code = (
        "from llamawheel.building import sdist\n"
        "from llamawheel.mirror import profiles\n"
        "from llamawheel.recipe import catalog\n"
        f"print(sdist.fetch(catalog.cpu_recipe().llama_cpp_python, profiles.load_profile({str(profile)!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env=_isolated_pip_env(cache), timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"/simple/llama-cpp-python/{genuine_sdist.name}" in mirror.requests
    fetched = Path(result.stdout.strip())
    assert fetched.read_bytes() == genuine_sdist.read_bytes()


def test_tampered_sdist_is_refused(mirror: Mirror, tmp_path: Path, build_backend_wheels: list[Path]) -> None:
    bad = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    payload = b"print('not what the recipe pinned')\n"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("llama_cpp_python-0.3.36/setup.py")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    mirror.add_files("llama-cpp-python", [bad])
    _serve_backend(mirror, build_backend_wheels)
    cache = tmp_path / "cache"
    profile = _profile(tmp_path, pypi=f"{mirror.url}/simple/")
    result = subprocess.run([sys.executable, "-m", "llamawheel", "build", "cpu", "--mirror", str(profile)],
                            capture_output=True, text=True, cwd=ROOT, env=_isolated_pip_env(cache), timeout=600)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "does not match its pinned sha256" in result.stderr
    # the mirror carries no compile cache tool: the default one gives way, and says so, before the sdist is refused
    default = cache_mod.PINS[cache_mod.DEFAULT]
    assert f"does not offer {default.project}=={default.version}: building without a compile cache" in result.stderr
    assert f"/simple/llama-cpp-python/{bad.name}" in mirror.requests
    leftovers = list((cache / "sdists").glob("*.tar.gz")) if (cache / "sdists").exists() else []
    assert leftovers == []


def test_a_named_compile_cache_the_mirror_lacks_stops_the_build(mirror: Mirror, tmp_path: Path) -> None:
    profile = _profile(tmp_path, pypi=f"{mirror.url}/simple/")
    result = subprocess.run([sys.executable, "-m", "llamawheel", "build", "cpu", "--mirror", str(profile),
                             "--compile-cache", "sccache"], capture_output=True, text=True, cwd=ROOT,
                            env=_isolated_pip_env(tmp_path / "cache"), timeout=600)
    assert result.returncode == 5, result.stdout + result.stderr
    pin = cache_mod.PINS["sccache"]
    assert f"ERROR the compile cache {pin.label} could not be installed" in result.stderr
    assert f"add {pin.project}=={pin.version} to the mirror" in result.stderr
    assert "--compile-cache none" in result.stderr
    assert f"/simple/{pin.project}/" in mirror.requests
