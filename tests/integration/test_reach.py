"""Reach, proven: a run with a mirror profile contacts only that profile's hosts, pip never asks a user's other
indexes, ``mirrors check`` says which features a mirror cannot serve and why, and two builds of the same inputs
in different folders give the same wheel.

The proxy test runs the commands in a network namespace whose only way out is a logging proxy on a veth pair:
whatever does not go through the proxy does not get out at all (and the run fails), and whatever goes through
it is logged by host."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from llamawheel.core import paths
from llamawheel.image import mirror_needs
from llamawheel.mirror import probe, profiles

from ..index_wheels import make_wheel
from . import logproxy
from .conftest import FIXTURE, ROOT, llamawheel
from .test_mirrors_loopback import Mirror


def machine_profile(path: Path) -> Path:
    """A profile made from this machine's own pip and apt configuration: its index, its Debian archive and
    security archive, nothing else (its local extra indexes and find-links are what a profile sets aside)."""
    index = profiles.pip_configured_index() or probe.pip_default_index()
    apt = profiles.system_apt_uris()
    debian = next(u for u in apt if "security" not in u and "ubuntu" not in u)
    security = next((u for u in apt if "security" in u), "")
    lines = ['description = "this machine\'s own index and Debian archive, as a profile"', f'pypi = "{index}"',
             f'debian = "{debian}"'] + ([f'debian-security = "{security}"'] if security else [])
    path.write_text("\n".join(lines) + "\n")
    return path


def allowed_hosts(profile_path: Path) -> set[str]:
    """The profile's hosts, and the host its PyPI index sends pip to for files (an index may link elsewhere)."""
    profile = profiles.load_profile(str(profile_path))
    hosts = {urlsplit(u).hostname or "" for u in profile.urls().values() if "://" in u} - {""}
    cpu = mirror_needs.features()[0]
    return hosts | probe.check(profile, [cpu]).file_hosts


@dataclass(frozen=True)
class Namespace:
    name: str
    proxy: logproxy.LoggingProxy

    def run(self, args: list[str], env: dict[str, str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        url = self.proxy.url
        proxied = {"http_proxy": url, "https_proxy": url, "HTTP_PROXY": url, "HTTPS_PROXY": url, "no_proxy": "",
                   "NO_PROXY": ""}
        return subprocess.run(["ip", "netns", "exec", self.name, *args], capture_output=True, text=True,
                              env={**os.environ, **env, **proxied}, timeout=timeout, cwd=ROOT)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def netns() -> Iterator[Namespace]:
    """A network namespace whose one link leads to the logging proxy on this side of a veth pair."""
    if shutil.which("ip") is None:
        pytest.fail("iproute2 is not installed (apt-get install iproute2; .ci/run does)")
    tag = f"{os.getpid() % 100000}"
    name, here, there = f"lw-reach-{tag}", f"lwr{tag}a", f"lwr{tag}b"
    subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.fail(f"cannot make a network namespace here (root and CAP_NET_ADMIN needed): {made.stderr}")
    try:
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        _ip("link", "set", there, "netns", name)
        _ip("addr", "add", f"{subnet}.1/30", "dev", here)
        _ip("link", "set", here, "up")
        for cmd in (["addr", "add", f"{subnet}.2/30", "dev", there], ["link", "set", there, "up"],
                    ["link", "set", "lo", "up"]):
            _ip("netns", "exec", name, "ip", *cmd)
        with logproxy.running(f"{subnet}.1") as proxy:
            yield Namespace(name, proxy)
    finally:
        _ip("link", "del", here, check=False)
        _ip("netns", "del", name, check=False)


def test_the_namespace_reaches_nothing_but_the_proxy(netns: Namespace) -> None:
    """The premise of the proxy test: going around the proxy fails."""
    host = urlsplit(profiles.system_apt_uris()[0]).hostname  # this machine's own Debian archive
    code = f"import socket; socket.create_connection(({host!r}, 80), timeout=5)"
    direct = subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=60)
    assert direct.returncode != 0 and ("resolution" in direct.stderr or "unreachable" in direct.stderr), direct.stderr


def test_a_build_a_publish_and_an_image_base_contact_only_the_profiles_hosts(
    netns: Namespace, cpu_wheel: Path, tmp_path: Path
) -> None:
    """A CPU build (sdist, Debian 11 root, wheelhouse), a publish (the closure) and the image's base (mmdebstrap),
    with a cache of their own, so that everything is fetched; only the compile cache is shared (``cpu_wheel``
    filled it), so the compile is quick."""
    profile = machine_profile(tmp_path / "machine.toml")
    allowed = allowed_hosts(profile)
    cache = tmp_path / "cache"
    cache.mkdir()
    shared = paths.cache_dir() / "compile-cache"
    shared.mkdir(parents=True, exist_ok=True)
    (cache / "compile-cache").symlink_to(shared)
    env = {"LLAMAWHEEL_CACHE": str(cache)}
    lw = [sys.executable, "-m", "llamawheel"]
    build = netns.run([*lw, "build", "cpu", "--mirror", str(profile), "--out", str(tmp_path / "out"), "--no-server"],
                      env)
    assert build.returncode == 0, build.stderr[-4000:]
    (wheel,) = (tmp_path / "out").glob("*.whl")
    publish = netns.run([*lw, "publish", str(wheel), "--index", str(tmp_path / "index"), "--mirror", str(profile),
                         "--python-version", "3.11"], env)
    assert publish.returncode == 0, publish.stderr[-4000:]
    base = netns.run([sys.executable, "-c", "import sys; from llamawheel.image import base; "
                      "from llamawheel.image import engine; from llamawheel.mirror import profiles; "
                      "print(base.make_base(engine.find('buildah'), profiles.load_profile(sys.argv[1]), True))",
                      str(profile)], {**env, "BUILDAH_ISOLATION": "chroot"})
    assert base.returncode == 0, base.stderr[-4000:]
    seen = set(netns.proxy.hosts)
    print("hosts the proxy was asked for:", sorted(seen), f"({len(netns.proxy.requests)} requests)")
    assert seen - allowed == set(), f"hosts outside the profile: {sorted(seen - allowed)}"
    # and the traffic did go through it: pip's index, its file host and the Debian archive
    assert {urlsplit(profiles.load_profile(str(profile)).pypi).hostname, urlsplit(
        profiles.load_profile(str(profile)).debian).hostname} <= seen
    # what the manifest says was fetched came from those hosts too, and every file has a URL
    fetched = json.loads(wheel.with_name(wheel.name + ".json").read_text())["fetched"]
    assert set(fetched) == {"source", "build_root", "build_requirements"}
    urls = [f["url"] for files in fetched.values() for f in files]
    assert all(urls) and {urlsplit(u).hostname for u in urls} <= allowed
    # the index records where each of its files came from
    state = json.loads((tmp_path / "index" / "cpu" / "simple" / ".llamawheel.json").read_text())
    for f in state["files"]:
        if f["direct"]:
            assert f["origin"].startswith("llamawheel build of recipe cpu"), f
        else:
            assert urlsplit(f["origin"]).hostname in allowed, f


@contextmanager
def _serving(root: Path) -> Iterator[tuple[str, list[str]]]:
    """``root`` served over HTTP on loopback: its URL, and the list of paths asked for."""
    mirror = Mirror(root)
    mirror.thread.start()
    try:
        yield mirror.url, mirror.requests
    finally:
        mirror.server.shutdown()


@pytest.fixture
def poisoned_index(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A loopback index holding a 'scikit-build-core' 99.0 that is not scikit-build-core: pip would prefer it."""
    root = tmp_path / "poison"
    project = root / "simple" / "scikit-build-core"
    project.mkdir(parents=True)
    wheel = make_wheel(project, name="scikit_build_core", version="99.0", platform="any", requires=(), extras=(),
                       package="scikit_build_core", payload=b"raise SystemExit('poisoned')\n")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (project / "index.html").write_text(f'<a href="{wheel.name}#sha256={digest}">{wheel.name}</a>\n')
    with _serving(root) as (url, asked):
        yield f"{url}/simple/", asked


def test_a_profiles_build_never_asks_the_users_extra_index(
    poisoned_index: tuple[str, list[str]], cuda_root: Path, tmp_path: Path
) -> None:
    url, asked = poisoned_index
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nextra-index-url = {url}\n")
    user = {"PIP_CONFIG_FILE": str(conf), "PIP_EXTRA_INDEX_URL": url}
    # the premise: this configuration does send pip to the poisoned index, which wins
    control = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp_path / "dl"),
                              "scikit-build-core"], capture_output=True, text=True, env={**os.environ, **user})
    assert control.returncode == 0 and any(p.startswith("/simple/scikit-build-core") for p in asked), control.stderr
    assert (tmp_path / "dl" / "scikit_build_core-99.0-py3-none-any.whl").is_file()
    asked.clear()
    profile = machine_profile(tmp_path / "machine.toml")
    result = llamawheel("build", "13.0", "--arch", "90", "--source", str(FIXTURE), "--out", str(tmp_path / "out"),
                        "--mirror", str(profile), env=user)
    assert result.returncode == 0, result.stderr[-3000:]
    assert asked == [], f"pip asked the user's extra index: {asked}"
    assert "set aside" in result.stderr and "extra-index-url" in result.stderr  # and said so
    (wheel,) = (tmp_path / "out").glob("*.whl")
    fetched = json.loads(wheel.with_name(wheel.name + ".json").read_text())["fetched"]["build_requirements"]
    backend = [f["file"] for f in fetched if f["file"].startswith("scikit_build_core-")]
    assert backend and "99.0" not in backend[0]


# ----------------------------------------------------------------------------- mirrors check


@pytest.fixture
def partial_mirror(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A loopback mirror with every PyPI page the recipes need, Debian bookworm without non-free, trixie and
    bullseye complete, and no NVIDIA repository."""
    root = tmp_path / "mirror"
    for feature in mirror_needs.features():
        for need in feature.needs:
            if need.upstream == "pypi":
                page = root / "simple" / need.path / "index.html"
                page.parent.mkdir(parents=True, exist_ok=True)
                old = page.read_text() if page.exists() else ""
                links = "".join(f'<a href="../../files/{c.strip("-")}">{c.strip("-")}</a>\n' for c in need.contains)
                page.write_text(old + links)
    for suite, components in (("bookworm", "main"), ("trixie", "main non-free"), ("bullseye", "main")):
        release = root / "debian" / "dists" / suite / "Release"
        release.parent.mkdir(parents=True)
        release.write_text(f"Origin: Debian\nSuite: {suite}\nComponents: {components}\n")
        security = root / "debian-security" / "dists" / f"{suite}-security" / "Release"
        security.parent.mkdir(parents=True)
        security.write_text(f"Suite: {suite}-security\nComponents: main\n")
    (root / "nvidia").mkdir()
    with _serving(root) as served:
        yield served


def test_mirrors_check_says_which_features_a_mirror_cannot_serve_and_why(
    partial_mirror: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, asked = partial_mirror
    profile = tmp_path / "partial.toml"
    profile.write_text(f'pypi = "{url}/simple/"\ndebian = "{url}/debian/"\ndebian-security = "{url}/debian-security/"\n'
                       f'cuda-apt = "{url}/nvidia/"\ndockerhub = "127.0.0.1:9"\nghcr = "127.0.0.1:9/ghcr"\n')
    result = llamawheel("mirrors", "check", str(profile), "--timeout", "3")
    assert result.returncode == 0, result.stdout + result.stderr  # the CPU wheels can be built: not a failure
    table = result.stdout.split("what it can serve", 1)[1]
    rows = {line.strip().split("  ")[0]: line for line in table.splitlines() if line.strip()}
    assert rows["CPU wheels (the pinned sdist and its build requirements)"].rstrip().endswith("yes")
    assert rows["CUDA 12.4 (Debian trixie non-free)"].rstrip().endswith("yes")
    assert rows["Debian 11 build root (glibc 2.31, GCC 10)"].rstrip().endswith("yes")
    assert "lacks component non-free" in rows["CUDA 11.8 (Debian bookworm non-free)"]
    nvidia = next(v for k, v in rows.items() if "NVIDIA's apt repository" in k)
    assert "no  (NVIDIA's repository index: HTTP 404" in nvidia and f"{url}/nvidia/debian12/x86_64/Release" in nvidia
    assert "unreachable" in rows["llama-gpt's UI image (docker compose)"]
    assert "127.0.0.1:9/v2/ghcr/getumbrel/llama-gpt-ui/manifests/1.0.1" in rows["llama-gpt's UI image (docker compose)"]
    # what it fetched is what a build fetches: the pinned sdist's page, the suites' Release files
    assert "/simple/llama-cpp-python/" in asked and "/debian/dists/bookworm/Release" in asked
    strict = llamawheel("mirrors", "check", str(profile), "--timeout", "3", "--strict")
    assert strict.returncode == 4 and "cannot serve every feature" in strict.stderr


def test_mirrors_check_fails_when_not_even_the_cpu_wheels_can_be_served(
    partial_mirror: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, _ = partial_mirror
    profile = tmp_path / "nopypi.toml"
    profile.write_text(f'pypi = "{url}/nothing-here/"\ndebian = "{url}/debian/"\n')
    result = llamawheel("mirrors", "check", str(profile), "--timeout", "3")
    assert result.returncode == 4
    assert "cannot serve even the CPU wheels" in result.stderr
    assert f"{url}/nothing-here/llama-cpp-python/" in result.stdout


# ----------------------------------------------------------------------------- reproducible


def test_the_same_inputs_built_in_two_folders_give_the_same_wheel(cuda_root: Path, tmp_path: Path) -> None:
    """The CUDA fixture from two copies of its source, each with a cache of its own (its own build folder,
    wheelhouse and empty compile cache; the toolchains shared): byte for byte the same wheel."""
    wheels = []
    for side in ("a", "b"):
        cache = tmp_path / side / "cache"
        cache.mkdir(parents=True)
        (cache / "toolchains").symlink_to(paths.toolchains_dir())
        source = shutil.copytree(FIXTURE, tmp_path / side / "source" / "cublas_probe")
        result = llamawheel("build", "13.0", "--arch", "90", "--source", str(source), "--out",
                            str(tmp_path / side / "out"), env={"LLAMAWHEEL_CACHE": str(cache)})
        assert result.returncode == 0, result.stderr[-3000:]
        (wheel,) = (tmp_path / side / "out").glob("*.whl")
        wheels.append(wheel)
    digests = [hashlib.sha256(w.read_bytes()).hexdigest() for w in wheels]
    print("sha256 of the two builds:", digests)
    assert digests[0] == digests[1], _first_difference(wheels[0], wheels[1])


def _first_difference(a: Path, b: Path) -> str:
    import zipfile

    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        for name in sorted(set(za.namelist()) | set(zb.namelist())):
            if name not in za.namelist() or name not in zb.namelist() or za.read(name) != zb.read(name):
                return f"first member that differs: {name}"
    return "same members, different archive bytes"
