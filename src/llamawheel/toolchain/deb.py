"""The ``deb`` provider: a CUDA root from Debian (or NVIDIA) apt packages.

apt runs with lists, cache and sources of its own under the cache (no root needed,
nothing installed on the system, the system's apt untouched). Signature checks stay
on: the repository's Release file must be signed by the recipe's keyring, and every
.deb is checked against the hashes in that signed index. Only the packages the recipe
names are fetched (no dependencies); they are unpacked with ``dpkg-deb -x`` and laid
out as a plain CUDA root, with the absolute paths Debian's packages carry rewritten.
"""

from __future__ import annotations

import fnmatch
import getpass
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

from llamawheel.core import fileio, log, paths, proc
from llamawheel.core.errors import DownloadError, ToolchainError
from llamawheel.mirror import provenance
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.mirror.provenance import Fetched
from llamawheel.recipe.model import AptSource, CudaMinor, DebPackage
from llamawheel.toolchain.assemble import check_complete, lay_out
from llamawheel.toolchain.root import CudaRoot, announce, cached_root, seal

_GET = re.compile(r"^(Get|Hit|Ign|Err):\d+\s")


def repo_url(apt: AptSource, mirror: MirrorProfile) -> str:
    """The repository URL: the profile's entry for the upstream, else this machine's apt."""
    base = mirror.apt_url(apt.upstream)
    if not base:
        raise ToolchainError(
            f"the mirror profile '{mirror.name}' has no '{apt.upstream}' URL and this machine's apt has none either",
            f"choose a profile with a {apt.upstream} mirror (llamawheel mirrors list), or add "
            f'{apt.upstream} = "https://..." to your own profile',
        )
    url = base.rstrip("/") + "/"
    return url + apt.path.lstrip("/") if apt.path else url


def pins_key(minor: CudaMinor, url: str) -> str:
    text = json.dumps([minor.version, [(p.name, p.version) for p in minor.deb_packages], minor.apt.__repr__(), url])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class AptSession:
    """apt-get and apt-cache with a private state folder."""

    def __init__(self, base: Path, url: str, apt: AptSource) -> None:
        self.base = base
        self.url = url
        self.apt = apt
        for d in ("lists/partial", "cache/archives/partial", "etc/sources.list.d", "etc/preferences.d",
                  "etc/apt.conf.d", "etc/trusted.gpg.d"):
            (base / d).mkdir(parents=True, exist_ok=True)
        (base / "status").write_text("")
        self.keyring = self._keyring()
        line = f"deb [signed-by={self.keyring}] {url} {apt.suite} {' '.join(apt.components)}".rstrip()
        (base / "etc" / "sources.list").write_text(line + "\n")
        self.options = [
            f"-oDir::Etc::SourceList={base / 'etc' / 'sources.list'}",
            f"-oDir::Etc::SourceParts={base / 'etc' / 'sources.list.d'}",
            f"-oDir::Etc::PreferencesParts={base / 'etc' / 'preferences.d'}",
            f"-oDir::Etc::Parts={base / 'etc' / 'apt.conf.d'}",
            f"-oDir::Etc::TrustedParts={base / 'etc' / 'trusted.gpg.d'}",
            f"-oDir::State::Lists={base / 'lists'}",
            f"-oDir::State::Status={base / 'status'}",
            f"-oDir::Cache={base / 'cache'}",
            "-oAPT::Architecture=amd64",
            "-oAPT::Architectures=amd64",
            "-oAcquire::Languages=none",
            "-oDebug::NoLocking=1",
            f"-oAPT::Sandbox::User={getpass.getuser()}",
        ]

    def _keyring(self) -> str:
        if self.apt.keyring.startswith("/"):
            if not Path(self.apt.keyring).is_file():
                raise ToolchainError(
                    f"the keyring {self.apt.keyring} that signs {self.url} is not on this machine",
                    "install Debian's archive keyring (apt-get install debian-archive-keyring)",
                )
            return self.apt.keyring
        return str(fetch_pinned_key(self.url + self.apt.keyring, self.apt.key_fingerprint, self.base))

    def _run(self, tool: str, args: list[str], cwd: Path | None = None, show: bool = True) -> list[str]:
        if not shutil.which(tool):
            raise ToolchainError(f"{tool} is not installed", "the deb provider needs apt (a Debian or Ubuntu host)")
        lines: list[str] = []

        def on_line(line: str) -> None:
            lines.append(line)
            if show and _GET.match(line):
                log.info("apt: " + line.strip())

        done = proc.stream([tool, *self.options, *args], error=ToolchainError, what=f"cannot run {tool}",
                           check=False, cwd=cwd, on_line=on_line, keep=200)
        if not done.ok:
            raise _explain(done, self.url)
        text = "\n".join(lines)
        if tool == "apt-get" and re.search(r"^(W|E): (Failed to fetch|GPG error|The repository)", text, re.M):
            raise _explain(proc.Result((tool, *args), 100, "\n".join(lines[-40:]), keep=40), self.url)
        return lines

    def update(self) -> None:
        self._run("apt-get", ["update"])

    def madison(self, name: str) -> list[str]:
        """Versions of ``name`` the signed index offers, newest first."""
        out = self._run("apt-cache", ["madison", name], show=False)
        rows = [[cell.strip() for cell in line.split("|")] for line in out if line.count("|") >= 2]
        return [row[1] for row in rows if row[0] == name]

    def resolve(self, packages: tuple[DebPackage, ...]) -> list[tuple[str, str]]:
        resolved = []
        for p in packages:
            offered = self.madison(p.name)
            matches = [v for v in offered if fnmatch.fnmatchcase(v, p.version)]
            if not matches:
                raise DownloadError(
                    f"{self.url} offers no {p.name} {p.version}"
                    + (f" (it has {', '.join(offered[:5])})" if offered else " (no such package there)"),
                    "the mirror may lag behind or drop old versions: try another --mirror, or update the recipe pin",
                )
            resolved.append((p.name, matches[0]))
        return resolved

    def download(self, resolved: list[tuple[str, str]], dest: Path) -> list[Fetched]:
        """Download the packages into ``dest``; each with the URL apt fetched it from (``--print-uris``)."""
        dest.mkdir(parents=True, exist_ok=True)
        pins = [f"{n}={v}" for n, v in resolved]
        uris = [line.split() for line in self._run("apt-get", ["download", "--print-uris", *pins], show=False)
                if line.startswith("'")]
        urls = {parts[1]: parts[0].strip("'") for parts in uris if len(parts) >= 2}
        self._run("apt-get", ["download", *pins], cwd=dest)
        return [provenance.described(deb, urls.get(deb.name, "")) for deb in sorted(dest.glob("*.deb"))]


def fetch_pinned_key(url: str, fingerprint: str, workdir: Path) -> Path:
    """Fetch a repository's public key and accept it only if its fingerprint is the pinned one."""
    if not shutil.which("gpg"):
        raise ToolchainError("gpg is not installed", "apt-get install gpg (needed to check the repository key)")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            key = resp.read()
    except OSError as exc:
        raise DownloadError(f"cannot fetch the repository key {url}: {exc}") from None
    home = Path(tempfile.mkdtemp(prefix="gnupg-", dir=workdir))
    try:
        home.chmod(0o700)
        (home / "key").write_bytes(key)
        gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
        # neither failing is an error here: a key that did not import lists no fingerprint, and is refused below
        proc.run([*gpg, "--import", str(home / "key")], error=ToolchainError, what="gpg could not import the key",
                 check=False)
        listing = proc.run([*gpg, "--with-colons", "--fingerprint"], error=ToolchainError,
                           what="gpg could not list the key", check=False).stdout
        found = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
        if fingerprint not in found:
            raise DownloadError(
                f"the key at {url} has fingerprint {', '.join(found) or 'none'}, the recipe pins {fingerprint}",
                "the mirror served a different key: refusing to trust packages signed with it",
            )
        keyring = workdir / "repository-key.gpg"
        keyring.write_bytes(proc.capture_bytes([*gpg, "--export", fingerprint], error=ToolchainError,
                                               what=f"gpg could not export the key {fingerprint} it imported"))
    finally:
        _stop_gpg_agent(home)
        shutil.rmtree(home, ignore_errors=True)
    return keyring


def _stop_gpg_agent(home: Path) -> None:
    """Stop the gpg-agent (and any other GnuPG daemon) that gpg started for the home ``home``: a daemon, it
    would outlive gpg and this process."""
    # a return code is no answer here (nothing to stop is fine); no gpgconf is gpg without its tools: the agent is left
    if proc.probe(["gpgconf", "--homedir", str(home), "--kill", "all"], timeout=30) is None:
        log.warn(f"could not stop the gpg-agent of {home} (gpgconf --kill all): it may still be running")


def _explain(failed: proc.Result, url: str) -> DownloadError:
    """A failed apt command as what went wrong with the mirror ``url``."""
    text = "\n".join(failed.tail())
    if "NO_PUBKEY" in text or "is not signed" in text or "GPG error" in text or "BADSIG" in text:
        return DownloadError(
            f"{url} is not signed by the recipe's key: refusing it\n{failed.describe()}",
            "the mirror may be broken or tampered with; choose another --mirror",
        )
    if "Hash Sum mismatch" in text or "Hashes of expected file" in text:
        return DownloadError(f"a package from {url} does not match the signed index\n{failed.describe()}",
                             "the mirror is serving inconsistent files; retry later or choose another --mirror")
    return DownloadError(
        f"apt could not fetch from {url}\n{failed.describe()}",
        "check that the mirror is reachable (llamawheel mirrors check) or choose another --mirror",
    )


def extract(debs: list[Path], tree: Path) -> None:
    if not shutil.which("dpkg-deb"):
        raise ToolchainError("dpkg-deb is not installed", "the deb provider needs dpkg (a Debian or Ubuntu host)")
    for deb in debs:
        proc.run(["dpkg-deb", "-x", str(deb), str(tree)], error=ToolchainError,
                 what=f"dpkg-deb could not unpack {deb.name}")


NVCC_PROFILE = """\
# Written by llamawheel: every path relative to this folder.
TOP              = $(_HERE_)/..
CICC_PATH        = $(TOP)/nvvm/bin
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
PATH            += $(CICC_PATH):$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64/stubs" "-L$(TOP)/lib64"
"""

_DEBIAN_TOOLS = ("ptxas", "fatbinary", "nvlink", "cudafe++", "bin2c", "cuobjdump", "nvdisasm", "nvprune",
                 "cu++filt", "__nvcc_device_query")


def lay_out_debian(tree: Path, root: Path) -> None:
    """Debian's split layout (/usr/bin, /usr/include, /usr/lib/nvidia-cuda-toolkit) -> a CUDA root."""
    toolkit = tree / "usr" / "lib" / "nvidia-cuda-toolkit"
    if not (toolkit / "bin" / "nvcc").is_file():
        raise ToolchainError("the Debian packages hold no usr/lib/nvidia-cuda-toolkit/bin/nvcc")
    (root / "bin").mkdir()
    (root / "nvvm" / "bin").mkdir(parents=True)
    os.rename(toolkit / "bin" / "nvcc", root / "bin" / "nvcc")
    os.rename(toolkit / "bin" / "crt", root / "bin" / "crt")
    os.rename(toolkit / "bin" / "cicc", root / "nvvm" / "bin" / "cicc")
    os.rename(toolkit / "libdevice", root / "nvvm" / "libdevice")
    for tool in _DEBIAN_TOOLS:
        if (tree / "usr" / "bin" / tool).is_file():
            os.rename(tree / "usr" / "bin" / tool, root / "bin" / tool)
    (root / "bin" / "nvcc.profile").write_text(NVCC_PROFILE)
    os.rename(tree / "usr" / "include", root / "include")
    os.rename(tree / "usr" / "lib" / "x86_64-linux-gnu", root / "lib64")
    (root / "lib").symlink_to("lib64")
    _relink_absolute(root, {"/usr/include/": "include/", "/usr/lib/x86_64-linux-gnu/": "lib64/"})


def lay_out_nvidia(tree: Path, root: Path, version: str) -> None:
    """NVIDIA's repository installs a whole root under /usr/local/cuda-X.Y: take it as it is."""
    source = tree / "usr" / "local" / f"cuda-{version}"
    if not source.is_dir():
        raise ToolchainError(f"the NVIDIA packages hold no usr/local/cuda-{version}")
    for item in source.iterdir():
        os.rename(item, root / item.name)


# Static libraries a build links; Debian's dev package holds every CUDA library's static
# archive (cuFFT, NPP, cuSPARSE...), gigabytes nobody here links.
_KEEP_STATIC = ("libcudart_static.a", "libcudadevrt.a", "libculibos.a")


def prune_static(root: Path) -> int:
    """Remove the static archives a build does not link; returns the bytes freed."""
    freed = 0
    for lib in (root / "lib64", root / "targets" / "x86_64-linux" / "lib"):
        if not lib.is_dir() or lib.is_symlink():
            continue
        for archive in lib.glob("*.a"):
            if archive.name not in _KEEP_STATIC and not archive.is_symlink():
                freed += archive.stat().st_size
                archive.unlink()
    return freed


def _relink_absolute(root: Path, prefixes: dict[str, str]) -> None:
    """Rewrite symlinks that point at /usr/... into links relative to ``root``."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = Path(dirpath, name)
            if not link.is_symlink():
                continue
            target = os.readlink(link)
            if not target.startswith("/"):
                continue
            for prefix, inside in prefixes.items():
                if target.startswith(prefix):
                    new = root / (inside + target[len(prefix):])
                    link.unlink()
                    link.symlink_to(os.path.relpath(new, link.parent))
                    break


class DebProvider:
    name = "deb"

    def root_dir(self, minor: CudaMinor) -> Path:
        return paths.toolchains_dir() / f"cuda-{minor.version}-deb"

    def cached(self, minor: CudaMinor, url: str) -> CudaRoot | None:
        return cached_root(self.root_dir(minor), pins_key(minor, url))

    def provision(self, minor: CudaMinor, mirror: MirrorProfile) -> CudaRoot:
        if minor.apt is None:
            raise ToolchainError(f"CUDA {minor.version} has no apt packages in its recipe")
        apt = minor.apt
        url = repo_url(apt, mirror)
        root_dir = self.root_dir(minor)
        with fileio.locked(root_dir):
            found = self.cached(minor, url)
            if found:
                log.info(f"CUDA {minor.version} toolchain: reusing {found.path} ({found.origin})")
                return found
            where = f"{apt.suite} " if apt.suite != "/" else ""
            log.info(
                f"provisioning CUDA {minor.version} from {apt.upstream} {where}packages ({mirror.name} mirror: {url})"
            )
            start = time.monotonic()
            with fileio.new_dir(root_dir) as tmp:
                session = AptSession(tmp / ".apt", url, apt)
                session.update()
                resolved = session.resolve(minor.deb_packages)
                fetched = session.download(resolved, tmp / ".debs")
                log.info(f"unpacking {len(fetched)} packages ({log.human_size(provenance.total_size(fetched))})")
                extract([f.path for f in fetched], tmp / ".tree")
                if apt.layout == "debian":
                    lay_out_debian(tmp / ".tree", tmp)
                else:
                    lay_out_nvidia(tmp / ".tree", tmp, minor.version)
                for scratch in (".apt", ".debs", ".tree"):
                    shutil.rmtree(tmp / scratch, ignore_errors=True)
                freed = prune_static(tmp)
                if freed:
                    log.info(f"removed {log.human_size(freed)} of static libraries no build links")
                lay_out(tmp)
                nvcc_version = check_complete(tmp, minor.version)
                origin = f"{apt.upstream} packages {where}({mirror.name} mirror)".replace("  ", " ")
                root = seal(tmp, root_dir, minor.version, self.name, origin, nvcc_version, fetched, start, {
                    "pins": pins_key(minor, url),
                    "repository": url,
                    "packages": [f"{n}={v}" for n, v in resolved],
                })
            announce(root, start)
            return root
