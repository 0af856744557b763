"""The build environment: the host as it is, or an older Debian root the wheel is compiled in, so that the
wheel needs only what that older system has (bullseye: glibc 2.31 and GCC 10's libstdc++; bound to glibc 2.28's
symbol versions with libstdc++ linked in, `llamawheel.building.glibc`, ``manylinux_2_28``) and installs where users'
systems are, not only where it was built.

A root is made with mmdebstrap from the mirror profile's Debian archive (else this machine's apt), cached
under the toolchains folder like a CUDA root (made in a temporary folder, renamed into place only when
complete, its marker written last, reused while its package list is unchanged), and entered with
bubblewrap: no container engine, no daemon. Inside, the network is cut: everything the build needs (the
build backend, CMake and ninja as wheels) is fetched on the host through the mirror profile first, so a
build root can never contact a host the profile does not name.

A build is sandboxed (`SANDBOX`): every namespace of its own (no host process, no IPC, a user namespace where
the kernel allows one), a new session, no capability, and the root read-only; only the build's own folder and
the compile cache's store are written (`Root.command` with ``read_only``). Each use first checks the root against
the list of its files recorded when it was made (`assemble.intact`).

The same maker gives the test roots (bookworm, trixie) that the wheels are installed into.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamawheel.core import fileio, log, paths, proc
from llamawheel.core.errors import ToolchainError, UsageError, did_you_mean
from llamawheel.core.redact import redact
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.recipe import platforms
from llamawheel.recipe.platforms import Platform
from llamawheel.toolchain.assemble import intact, record_files, tree_size

HOST = "host"
ROOT_MARKER = "llamawheel-root.json"
VENV = "/opt/llamawheel"
"""The virtual environment inside a build root that runs ``pip wheel`` (made with the root's own Python)."""


@dataclass(frozen=True)
class Suite:
    """A Debian release as a build or test environment: what a wheel built in it needs from a system."""

    name: str
    debian: str
    glibc: tuple[int, int]
    gcc: int
    python: str

    @property
    def label(self) -> str:
        return f"Debian {self.debian} ({self.name}: glibc {self.glibc[0]}.{self.glibc[1]}, GCC {self.gcc}, " \
               f"Python {self.python})"


SUITES = {
    s.name: s for s in (
        Suite("bullseye", "11", (2, 31), 10, "3.9"),
        Suite("bookworm", "12", (2, 36), 12, "3.11"),
        Suite("trixie", "13", (2, 41), 14, "3.13"),
    )
}
"""The Debian releases the machine's mirror still serves (buster is gone from it: bullseye is the oldest)."""

SANDBOX = ("--unshare-all", "--new-session", "--die-with-parent", "--cap-drop", "ALL")
"""What every command in a root runs under: its own user (where the kernel allows it), PID, IPC, network, UTS and
cgroup namespaces (the network only shared on request: ``--share-net``), a new terminal session (no
``TIOCSTI`` into this one), killed with llamawheel, and no capability even when run as root (``--cap-drop``:
bubblewrap 0.3 and later; Debian 12 has 0.8.0)."""

BUILD_PACKAGES = ("build-essential", "python3", "python3-venv", "python3-dev")
"""A build root: GCC, make, the C library's headers, Python to run pip and scikit-build-core. CMake and ninja
come as wheels (Debian 11's CMake 3.18 is older than llama.cpp asks for); the compile cache is llamawheel's own
(``build.cache``), bound in."""


def build_envs() -> tuple[str, ...]:
    return (HOST, *SUITES)


def check_env(name: str, option: str = "--build-env") -> str:
    if name != HOST and name not in SUITES:
        raise UsageError(f"{option} {name}: not a build environment{did_you_mean(name, build_envs())}",
                         f"choose one of {', '.join(build_envs())} ('host' builds on this machine as it is)")
    return name


def check_can_build(suite: str) -> None:
    """Before anything is downloaded: bubblewrap is installed and may make namespaces here (a container that is
    not privileged may not), and mmdebstrap is there if the root is still to be made."""
    host_tip = "or build on this machine as it is: --build-env host (the wheel then needs this machine's glibc)"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise ToolchainError(f"bubblewrap is not installed: it enters the Debian {suite} build root",
                             f"apt-get install bubblewrap; {host_tip}")
    proc.run([bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *SANDBOX, "--", "true"],
             error=ToolchainError, what="bubblewrap cannot make its namespaces here",
             tip=f"in a container, run it privileged (docker run --privileged); {host_tip}")
    made = (paths.toolchains_dir() / f"buildroot-{suite}" / ROOT_MARKER).is_file()
    if not made and shutil.which("mmdebstrap") is None:
        raise ToolchainError(f"mmdebstrap is not installed: it makes the Debian {suite} build root from the apt "
                             "mirror (once)", f"apt-get install mmdebstrap; {host_tip}")


@dataclass(frozen=True)
class Root:
    """A finished Debian root (its marker written)."""

    path: Path
    suite: str
    packages: tuple[str, ...]
    origin: str
    size_bytes: int
    seconds: float
    glibc: str
    gcc: str
    python: str
    fetched: tuple[dict[str, Any], ...] = ()
    """Each .deb it was made of: file, URL, sha256, size."""
    platform: str = ""
    """The machine its programs are for (``aarch64``: run here under QEMU, `emulated`); '' for this machine's."""

    @classmethod
    def from_marker(cls, path: Path) -> Root:
        data = json.loads((path / ROOT_MARKER).read_text())
        return cls(path, data["suite"], tuple(data["packages"]), data["origin"], int(data["size_bytes"]),
                   float(data["seconds"]), data["glibc"], data["gcc"], data["python"], tuple(data.get("fetched", ())),
                   data.get("platform", ""))

    @property
    def name(self) -> str:
        return self.path.name

    def describe(self) -> str:
        known = (("glibc", self.glibc), ("GCC", self.gcc), ("Python", self.python))
        facts = ", ".join(f"{k} {v}" for k, v in known if v)
        return f"{self.name}: Debian {self.suite} root ({facts}), {log.human_size(self.size_bytes)}, from {self.origin}"

    def manifest_fields(self) -> dict[str, Any]:
        return {"build_env": {"name": self.suite, "root": self.name, "glibc": self.glibc, "gcc": self.gcc,
                              "python": self.python, "packages": list(self.packages), "origin": self.origin},
                "fetched": {"build_root": list(self.fetched)}}

    # ------------------------------------------------------------------ running things inside

    def command(self, argv: Sequence[str], *, env: Mapping[str, str],
                binds: Sequence[Path | tuple[str, str]] = (), ro_binds: Sequence[Path | tuple[str, str]] = (),
                network: bool = False, cwd: Path | None = None, read_only: bool = False) -> list[str]:
        """``argv`` run inside this root with bubblewrap, under `SANDBOX`: the root as ``/`` (``read_only``, as
        every build has it; else writable, as the copies of test roots that wheels are installed into), a fresh
        /tmp, ``binds`` at their own paths (or, as a pair, here -> inside), ``ro_binds`` alike but read-only,
        only ``env`` in the environment, and no network unless asked."""
        # `check_can_build` has said what to install when there is none
        cmd = [shutil.which("bwrap") or "bwrap", "--bind", str(self.path), "/", "--dev", "/dev", "--proc", "/proc",
               "--tmpfs", "/tmp", *SANDBOX, "--clearenv"]
        cmd.append("--share-net" if network else "--unshare-net")
        for flag, pairs in (("--bind", binds), ("--ro-bind", ro_binds)):
            for b in pairs:
                here, there = b if isinstance(b, tuple) else (str(b), str(b))
                cmd += [flag, here, there]
        if read_only:  # last: the folders the binds need are made in the root first (their mount points)
            cmd += ["--remount-ro", "/"]
        for key, value in {"PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
                           **env}.items():
            cmd += ["--setenv", key, value]
        if cwd is not None:
            cmd += ["--chdir", str(cwd)]
        return [*cmd, "--", *argv]

    def emulated(self, argv: Sequence[str], *, cpu: str, env: Mapping[str, str],
                 ro_binds: Sequence[Path] = ()) -> list[str]:
        """``argv`` (a program of this root, by its path inside) run under QEMU user mode as the CPU model ``cpu``,
        for a root of another platform: this machine's files read-only with the root's over them (``qemu -L``:
        the program, its loader and libraries come from the root), the root itself writable, a fresh /tmp,
        `SANDBOX` with the network cut, only ``env`` in the environment. Without binfmt_misc a program run so
        cannot start another of the root's programs; a fork is fine."""
        target = platforms.get(self.platform, "root platform")
        qemu = shutil.which(target.qemu)
        if qemu is None:
            raise ToolchainError(f"{target.qemu} is not installed: it runs {target.label} programs on this machine",
                                 "apt-get install qemu-user")
        cmd = [shutil.which("bwrap") or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--tmpfs", "/tmp", "--bind", str(self.path), str(self.path), "--dev", str(self.path / "dev"),
               *SANDBOX, "--unshare-net", "--clearenv"]
        for b in ro_binds:
            cmd += ["--ro-bind", str(b), str(b)]
        for key, value in {"HOME": "/tmp", "LANG": "C.UTF-8", **env}.items():
            cmd += ["--setenv", key, value]
        program = str(self.path / argv[0].lstrip("/")) if argv[0].startswith("/") else argv[0]
        return [*cmd, "--", qemu, "-cpu", cpu, "-L", str(self.path), program, *argv[1:]]

    def output(self, argv: Sequence[str]) -> str:
        """The output of a short command inside (``gcc -dumpfullversion``); '' if it fails."""
        done = proc.probe(self.command(argv, env={}, read_only=True), timeout=60)
        return done.stdout.strip() if done is not None and done.ok else ""


# ---------------------------------------------------------------------- making roots


def _key(suite: str, packages: Sequence[str], hooks: Sequence[str]) -> str:
    data = json.dumps({"suite": suite, "packages": sorted(packages), "hooks": list(hooks), "records": 2},
                      sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:12]


def _show(line: str) -> None:
    if line.startswith(("I: success", "E: ", "W: ")) or "downloading packages" in line or "installing" in line:
        log.info("mmdebstrap: " + line.strip())


def make_root(name: str, suite: str, packages: Sequence[str], mirror: MirrorProfile, *,
              hooks: Sequence[str] = (), folder: Path | None = None, target: Platform | None = None) -> Root:
    """The Debian ``suite`` root ``folder/name`` with ``packages`` (minbase variant), made with mmdebstrap from
    the mirror unless one with the same packages is there already. ``hooks`` are mmdebstrap customize hooks
    (``$1`` is the root). For a ``target`` platform other than this machine's, a root of that platform's packages,
    unpacked only (mmdebstrap's extract variant: nothing of it can run here to configure it, and it needs
    nothing run), from the main suite (Debian's security archive serves no arm64), its programs run with
    `Root.emulated`."""
    if suite not in SUITES:
        raise UsageError(f"Debian {suite}: not a suite llamawheel knows{did_you_mean(suite, SUITES)}",
                         f"choose one of {', '.join(SUITES)}")
    foreign = target is not None and not target.native
    if foreign and hooks:
        raise UsageError(f"a {target.name if target else ''} root is only unpacked: it runs no hooks")
    final = (folder or paths.toolchains_dir()) / name
    key = _key(suite, packages, hooks) + (f"-{target.debian_arch}" if foreign and target else "")
    with fileio.locked(final):
        marker = final / ROOT_MARKER
        if marker.is_file() and json.loads(marker.read_text()).get("key") == key \
                and intact(final, f"the Debian {suite} root", compilers):
            return Root.from_marker(final)
        exe = shutil.which("mmdebstrap")
        if exe is None:
            raise ToolchainError(f"mmdebstrap is not installed: it makes the Debian {suite} root from the apt mirror",
                                 "apt-get install mmdebstrap; or build on this machine as it is: --build-env host")
        sources = mirror.debian_sources(suite)[:1] if foreign else mirror.debian_sources(suite)
        if not sources:
            raise ToolchainError(
                f"the mirror profile '{mirror.name}' has no Debian URL and this machine's apt has none either",
                'add debian = "https://..." to a profile (llamawheel mirrors list), or --build-env host')
        log.info(f"making a Debian {suite} root ({', '.join(packages)}) with mmdebstrap from the {mirror.name} apt "
                 "mirror (about a minute, once)")
        started = time.monotonic()
        log_file = final.with_name(final.name + ".log")
        log_file.unlink(missing_ok=True)
        with fileio.new_dir(final) as tmp, tempfile.TemporaryDirectory(prefix="apt-record-") as record:
            # before the lists go: the signed lists that say where each installed package came from
            keep = f'--customize-hook=cp -a "$1"/var/lib/apt/lists {record}/lists'
            variant = [f"--architectures={target.debian_arch}", "--variant=extract"] if foreign and target else \
                ["--variant=minbase"]
            cmd = [exe, *variant, f"--include={','.join(packages)}", keep,
                   "--customize-hook=rm -rf \"$1\"/var/cache/apt/archives/*.deb",
                   *[f"--customize-hook={h}" for h in hooks], suite, str(tmp), *sources]
            proc.stream(cmd, error=ToolchainError, what=f"mmdebstrap could not make the Debian {suite} root",
                        tip=f"check the apt mirror (llamawheel mirrors check {mirror.name}) and that it still serves "
                            f"{suite}; full log: {log_file}",
                        log_file=log_file, on_line=_show)
            seconds = time.monotonic() - started
            facts = _facts(tmp)
            data = {"key": key, "suite": suite, "packages": list(packages), "origin": f"{mirror.name} apt mirror",
                    "size_bytes": tree_size(tmp), "seconds": round(seconds, 1), **facts,
                    "fetched": debs_fetched(Path(record), sources, tmp / "var/lib/dpkg/status"),
                    "platform": target.name if foreign and target else ""}
            record_files(tmp, compilers)
            (tmp / ROOT_MARKER).write_text(json.dumps(data, indent=2) + "\n")
        root = Root.from_marker(final)
    log.info(f"Debian {suite} root ready at {final}: {log.human_size(root.size_bytes)} in {log.human_time(seconds)}")
    return root


def compilers(rel: str) -> bool:
    """The files of a root hashed again before each use (with their exec bit): GCC's own programs and everything in
    ``usr/bin`` (about 130 MB in the bullseye build root); every other file is checked by its size and time."""
    return rel.startswith(("usr/bin/", "usr/lib/gcc/"))


def _list_prefix(uri: str) -> str:
    """The start of the file names apt gives the lists of the archive at ``uri`` (its URItoFileName)."""
    return re.sub(r"^[a-z+]+://", "", uri.rstrip("/") + "/").replace("/", "_")


def debs_fetched(record: Path, sources: Sequence[str], status: Path) -> list[dict[str, Any]]:
    """Each package installed in a root (dpkg's ``status``), as the signed lists it was fetched by (``lists/`` in
    ``record``) give it: its file, URL (the archive's and the index's ``Filename``), sha256 and size. apt checked
    each download against that sha256, so the list says exactly which file was used."""
    index: dict[tuple[str, str, str], dict[str, Any]] = {}
    uris = [line.split()[1] for line in sources if len(line.split()) > 2]
    for packages in sorted((record / "lists").glob("*_Packages")):
        base = next((u.rstrip("/") + "/" for u in uris if packages.name.startswith(_list_prefix(u))), "")
        for stanza in packages.read_text(errors="replace").split("\n\n"):
            fields = dict(re.findall(r"^(Package|Version|Architecture|Filename|Size|SHA256): (\S+)$", stanza, re.M))
            if base and {"Package", "Version", "Filename", "SHA256"} <= fields.keys():
                key = (fields["Package"], fields["Version"], fields.get("Architecture", ""))
                index[key] = {"file": fields["Filename"].rsplit("/", 1)[-1], "url": redact(base + fields["Filename"]),
                              "sha256": fields["SHA256"], "size": int(fields.get("Size", 0))}
    fetched = []
    text = status.read_text(errors="replace") if status.is_file() else ""
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^(Package|Version|Architecture|Status): (.+)$", stanza, re.M))
        if "Package" not in fields or not fields.get("Status", "").endswith(" installed"):
            continue
        key = (fields["Package"], fields.get("Version", ""), fields.get("Architecture", ""))
        fetched.append(index.get(key) or {"file": f"{key[0]}_{key[1]}_{key[2]}.deb", "url": "", "sha256": "",
                                          "size": 0})
    return sorted(fetched, key=lambda f: f["file"])


def _dpkg_version(root: Path, package: str) -> str:
    status = root / "var/lib/dpkg/status"
    block = ""
    for chunk in status.read_text(errors="replace").split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", chunk, re.M):
            block = chunk
            break
    match = re.search(r"^Version: (\S+)$", block, re.M)
    return match.group(1) if match else ""


def _facts(root: Path) -> dict[str, str]:
    """glibc, GCC and Python of a finished root, from its dpkg database (nothing run inside)."""
    glibc = re.match(r"(\d+\.\d+)", _dpkg_version(root, "libc6") or  # an unpacked root has no dpkg database
                     next((p.name[5:] for p in sorted(root.glob("lib/*-linux-gnu/libc-2.*.so"))), ""))
    gccs = sorted((p.name for p in (root / "usr/bin").glob("gcc-*") if re.fullmatch(r"gcc-\d+", p.name)),
                  key=lambda n: int(n[4:]))
    gcc = ""
    if gccs:
        found = re.search(r"(\d+\.\d+(?:\.\d+)?)", _dpkg_version(root, gccs[-1]))
        gcc = found.group(1) if found else gccs[-1][4:]
    pythons = sorted(p.name[6:] for p in (root / "usr/bin").glob("python3.*") if re.fullmatch(r"python3\.\d+", p.name))
    return {"glibc": glibc.group(1) if glibc else "", "gcc": gcc, "python": pythons[-1] if pythons else ""}


def build_root(suite: str, mirror: MirrorProfile, target: Platform | None = None) -> Root:
    """The build root for ``suite``: GCC, Python and a virtual environment at ``/opt/llamawheel``; for a ``target``
    platform other than this machine's, also its cross compiler and C library (a root of its own:
    ``buildroot-bullseye-aarch64``)."""
    cross = target.cross_packages if target is not None else ()
    name = f"buildroot-{suite}" + (f"-{target.name}" if cross and target else "")
    return make_root(name, suite, (*BUILD_PACKAGES, *cross), mirror, hooks=[f'chroot "$1" python3 -m venv {VENV}'])


def cached_roots(folder: Path) -> list[Root]:
    if not folder.is_dir():
        return []
    return [Root.from_marker(d) for d in sorted(folder.iterdir()) if (d / ROOT_MARKER).is_file()]


def remove_root(root: Path) -> None:
    """Remove a root (it may hold files only root can delete, and device nodes). Call it holding
    ``fileio.locked(root)``, the lock its making takes; the lock file itself stays (another run may be waiting on
    it: a new one would let two runs in at once)."""
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        # what rm cannot remove it says on the terminal; what is left is no error here (a new root is made beside)
        proc.run(["rm", "-rf", "--one-file-system", str(root)], error=ToolchainError, what=f"could not remove {root}",
                 check=False, capture=False)
    root.with_name(root.name + ".log").unlink(missing_ok=True)


def env_for_pip(wheelhouse: Path) -> dict[str, str]:
    """pip inside a root: only the wheelhouse, no index, no configuration of the host's or the root's."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse), "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
