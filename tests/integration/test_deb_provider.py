"""The deb provider for real: apt through a mirror into a private state folder."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamawheel.core.errors import DownloadError
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.recipe import catalog
from llamawheel.recipe.model import AptSource
from llamawheel.toolchain.deb import AptSession, fetch_pinned_key

from .conftest import FIXTURE, llamawheel
from .test_mirrors_loopback import Mirror, _profile


@pytest.mark.parametrize("version", ["12.4", "11.8"])
def test_debian_toolchain_builds_the_cublas_probe(version: str, tmp_path: Path) -> None:
    """Provision from Debian (about 1.2 GB the first time, then cached) and build a verified wheel, in the
    recipes' Debian 11 build root: its GCC 10 is a host compiler both nvcc 11.8 and 12.4 accept, and the
    wheel needs no newer glibc than 2.31."""
    result = llamawheel("build", version, "--arch", "86", "--source", str(FIXTURE), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    tag = "cu" + version.replace(".", "")
    (wheel,) = tmp_path.glob(f"cublas_probe-0.1.0+{tag}.sm86-*.whl")
    assert "result: PASS" in result.stdout
    assert "building in the bullseye root" in result.stderr
    glibc = int(wheel.name.rsplit("manylinux_2_", 1)[1].split("_")[0])
    assert glibc <= 31, wheel.name
    major = version.split(".")[0]
    assert f"needs libcublas.so.{major}" in result.stdout
    listing = llamawheel("toolchains")
    assert f"cuda-{version}-deb" in listing.stdout and "debian packages" in listing.stdout
    assert "buildroot-bullseye" in listing.stdout


def test_the_profiles_debian_url_is_the_one_apt_uses(tmp_path: Path) -> None:
    """A profile whose Debian mirror is a loopback server that has nothing: apt must ask it, and fail naming it."""
    mirror = Mirror(tmp_path / "empty")
    mirror.root.mkdir()
    mirror.thread.start()
    try:
        profile = _profile(tmp_path, debian=f"{mirror.url}/debian/")
        env = {"LLAMAWHEEL_CACHE": str(tmp_path / "cache")}
        result = llamawheel("toolchain", "12.4", "--mirror", str(profile), "--toolchain", "deb", env=env)
    finally:
        mirror.server.shutdown()
    assert result.returncode == 5, result.stderr
    assert f"{mirror.url}/debian/" in result.stderr
    assert any(r.startswith("/debian/dists/trixie/") for r in mirror.requests), mirror.requests
    assert not (tmp_path / "cache" / "toolchains" / "cuda-12.4-deb").exists()


# --- NVIDIA's repository layout, served by a signed flat repository on loopback ---------------

def _gpg(home: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", *args], input=stdin,
                          capture_output=True, text=True, check=True).stdout


@contextlib.contextmanager
def _gpg_home(home: Path) -> Iterator[Path]:
    """A GnuPG home of its own; the gpg-agent that gpg starts for it (a daemon: it outlives gpg and the test)
    is stopped on the way out."""
    home.mkdir(mode=0o700)
    try:
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)


def _gpg_agents_naming(folder: Path, wait: float = 5.0) -> list[str]:
    """The command lines of running gpg-agent processes that name ``folder`` (their --homedir under it), read
    from /proc; waits up to ``wait`` seconds for them to go (an agent told to stop exits a moment later)."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = [os.fsdecode(a) for a in cmdline.read_bytes().split(b"\0") if a]
            except OSError:  # it ended meanwhile
                continue
            if args and Path(args[0]).name == "gpg-agent" and any(str(folder) in a for a in args[1:]):
                found.append(" ".join(args))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _fake_deb(folder: Path, name: str, version: str) -> Path:
    root = folder / f"{name}_{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(textwrap.dedent(f"""\
        Package: {name}
        Version: {version}
        Architecture: amd64
        Maintainer: llamawheel tests <tests@llamawheel.invalid>
        Description: stand-in for {name}
        """))
    minor = version.rsplit(".", 1)[0]
    payload = root / "usr" / "local" / f"cuda-{minor}" / "share" / name
    payload.parent.mkdir(parents=True)
    payload.write_text(version)
    deb = folder / f"{name}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(root), str(deb)], check=True, capture_output=True)
    shutil.rmtree(root)
    return deb


class SignedRepo:
    """A flat apt repository (NVIDIA's shape: ``<url>/debian12/x86_64/``), signed with a fresh key."""

    def __init__(self, base: Path, packages: dict[str, list[str]]) -> None:
        self.mirror = Mirror(base / "www")
        repo = self.mirror.root / "debian12" / "x86_64"
        repo.mkdir(parents=True)
        self.gnupg = base / "gnupg"
        with _gpg_home(self.gnupg) as home:
            self._sign(repo, home, packages)
        self.mirror.thread.start()

    def _sign(self, repo: Path, home: Path, packages: dict[str, list[str]]) -> None:
        _gpg(home, "--passphrase", "", "--quick-gen-key", "llamawheel test repo <repo@llamawheel.invalid>",
             "rsa2048", "sign", "never")
        listing = _gpg(home, "--with-colons", "--fingerprint")
        self.fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        (repo / "testkey.pub").write_text(_gpg(home, "--armor", "--export", self.fingerprint))
        stanzas = []
        for name, versions in packages.items():
            for version in versions:
                deb = _fake_deb(repo, name, version)
                data = deb.read_bytes()
                stanzas.append(
                    f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nFilename: ./{deb.name}\n"
                    f"Size: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\nDescription: stand-in\n"
                )
        index = "\n".join(stanzas).encode()
        (repo / "Packages").write_bytes(index)
        (repo / "Packages.gz").write_bytes(gzip.compress(index))
        lines = ["Origin: llamawheel tests", "Label: test", "Architectures: amd64", "SHA256:"]
        for f in ("Packages", "Packages.gz"):
            data = (repo / f).read_bytes()
            lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {f}")
        (repo / "Release").write_text("\n".join(lines) + "\n")
        _gpg(home, "--local-user", self.fingerprint, "--clearsign", "-o", str(repo / "InRelease"),
             str(repo / "Release"))

    def source(self, fingerprint: str | None = None) -> AptSource:
        return AptSource(upstream="cuda-apt", suite="/", components=(), path="debian12/x86_64/",
                         keyring="testkey.pub", key_fingerprint=fingerprint or self.fingerprint, layout="nvidia")


NVIDIA_MINORS = {v: m for v, m in catalog.find_cuda("12")[0].minors.items() if m.apt and m.apt.upstream == "cuda-apt"}


@pytest.fixture(scope="module")
def signed_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignedRepo]:
    if not (shutil.which("gpg") and shutil.which("dpkg-deb") and shutil.which("apt-get")):
        pytest.skip("needs gpg, dpkg-deb and apt-get (a Debian host)")
    packages = {}
    for version, minor in NVIDIA_MINORS.items():
        for deb in minor.deb_packages:
            packages[deb.name] = [f"{version}.68-1", f"{version}.85-1"]
    repo = SignedRepo(tmp_path_factory.mktemp("nvrepo"), packages)
    yield repo
    repo.mirror.server.shutdown()


@pytest.mark.parametrize("version", sorted(NVIDIA_MINORS))
def test_nvidia_repository_minor_resolves_to_the_newest_update(version: str, signed_repo: SignedRepo,
                                                                tmp_path: Path) -> None:
    minor = NVIDIA_MINORS[version]
    profile = MirrorProfile(name="loopback", path=tmp_path / "p.toml", cuda_apt=f"{signed_repo.mirror.url}/")
    from llamawheel.toolchain.deb import repo_url

    assert minor.apt is not None
    url = repo_url(minor.apt, profile)
    assert url == f"{signed_repo.mirror.url}/debian12/x86_64/"
    session = AptSession(tmp_path / "apt", url, signed_repo.source())
    session.update()
    resolved = session.resolve(minor.deb_packages)
    assert [n for n, _ in resolved] == [d.name for d in minor.deb_packages]
    assert all(v == f"{version}.85-1" for _, v in resolved)
    debs = session.download(resolved, tmp_path / "debs")
    assert sorted(d.path.name for d in debs) == sorted(f"{n}_{v}_amd64.deb" for n, v in resolved)
    assert f"/debian12/x86_64/./{debs[0].path.name}" in signed_repo.mirror.requests
    # each recorded with the URL apt fetched it from
    assert all(d.url == f"{url}./{d.path.name}" and len(d.sha256) == 64 for d in debs), debs


def test_repository_key_with_another_fingerprint_is_refused(signed_repo: SignedRepo, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="fingerprint"):
        AptSession(tmp_path / "apt", f"{signed_repo.mirror.url}/debian12/x86_64/", signed_repo.source("0" * 40))


def test_unsigned_index_is_refused(signed_repo: SignedRepo, tmp_path: Path) -> None:
    """apt's signature check stays on: a Release signed by another key fails update."""
    other = tmp_path / "other.gpg"
    with _gpg_home(tmp_path / "gnupg") as home:
        _gpg(home, "--passphrase", "", "--quick-gen-key", "someone else <x@llamawheel.invalid>", "rsa2048", "sign",
             "never")
        other.write_bytes(subprocess.run(["gpg", "--homedir", str(home), "--export"], capture_output=True).stdout)
    assert not _gpg_agents_naming(home)
    source = AptSource(upstream="cuda-apt", suite="/", components=(), path="debian12/x86_64/",
                       keyring=str(other), key_fingerprint="", layout="nvidia")
    session = AptSession(tmp_path / "apt", f"{signed_repo.mirror.url}/debian12/x86_64/", source)
    with pytest.raises(DownloadError, match="not signed by the recipe's key"):
        session.update()
    assert not list((tmp_path / "apt" / "lists").glob("*Packages*"))  # nothing from it was accepted


@pytest.mark.parametrize("pinned", ["right", "wrong"])
def test_fetching_the_key_leaves_no_gpg_agent(pinned: str, signed_repo: SignedRepo, tmp_path: Path) -> None:
    """gpg starts a gpg-agent for the temporary GnuPG home; it must be stopped, whether the key is accepted or not."""
    url = f"{signed_repo.mirror.url}/debian12/x86_64/testkey.pub"
    if pinned == "right":
        keyring = fetch_pinned_key(url, signed_repo.fingerprint, tmp_path)
        assert keyring == tmp_path / "repository-key.gpg" and keyring.stat().st_size > 0
    else:
        with pytest.raises(DownloadError, match="the recipe pins 0000"):
            fetch_pinned_key(url, "0" * 40, tmp_path)
    assert not _gpg_agents_naming(tmp_path)
    assert not list(tmp_path.glob("gnupg-*"))  # the temporary home is gone too


def test_signing_the_repository_left_no_gpg_agent(signed_repo: SignedRepo) -> None:
    assert not _gpg_agents_naming(signed_repo.gnupg)
