"""The dependency closure of a wheel: every wheel ``pip install "llama-cpp-python[server]"`` needs,
for another machine's Python and platform, fetched with ``pip download`` through the mirror profile, and
the lock that records it.

pip is asked once per Python version the recipe names::

    pip download --only-binary=:all: --platform manylinux_2_35_x86_64 ... --platform manylinux2014_x86_64
                 --python-version 3.10 --implementation cp --abi cp310 "llama-cpp-python[server] @ file:///..."

pip checks wheel tags and Requires-Python against the target Python, but it evaluates environment
markers (``exceptiongroup ; python_version < "3.11"``) against the Python it runs on. So after each
download the Requires-Dist of every fetched wheel is walked again with the target's markers, and what
is missing is fetched in a further round.

The lock: what was resolved for one Python on one machine is written beside the variant's pages as a PEP 751
lock file, ``<variant>/simple/pylock.cp311-x86_64.toml`` (``lock-version = "1.0"``; each package with its
version and its wheel's name, path into the index's store, size and sha256; ``[tool.llamawheel]`` says which
wheels it was resolved for). The next publish for that Python takes exactly the locked files instead of
resolving anew: from the index's own store when they are there (checked against the lock's sha256), else
with ``pip download --require-hashes`` of ``name==version --hash=...``. Only when a wheel needs something the
lock does not hold is pip asked to resolve, with the locked releases as constraints, and the lock grows.
``publish --refresh-lock`` ignores the variant's locks, resolves anew and writes the locks again for the
Python versions of that publish (the others' locks are dropped, to be written by their next publish).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from packaging.utils import canonicalize_name

from llamawheel import __version__
from llamawheel.core import fileio, log
from llamawheel.core.compat import tomllib
from llamawheel.core.errors import LlamawheelError, PublishError
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.mirror.provenance import Fetched
from llamawheel.pipeline.wheelhouse import download_pinned
from llamawheel.publish import index_pages
from llamawheel.recipe import catalog
from llamawheel.recipe.model import requirement_name
from llamawheel.recipe.variant import Variant
from llamawheel.wheel import distmeta
from llamawheel.wheel.requirements import (
    fetch_settled,
    platforms_for,
    supported_tags,
    target_environment,
    unmet_requirements,
    wheel_arch,
)

EXTRAS = ("server",)
"""The extras whose dependencies an index carries (when the wheel declares them)."""
LOCK_VERSION = "1.0"
"""The PEP 751 format version the locks are written in (and the only one read)."""
_LOCK_NAME = re.compile(r"^pylock\.cp(\d)(\d+)-([A-Za-z0-9_]+)\.toml$")


# ----------------------------------------------------------------------------- the lock (PEP 751)


def lock_name(python: str, arch: str) -> str:
    """``pylock.cp311-x86_64.toml`` for CPython 3.11 on x86_64 (PEP 751: ``pylock.<name>.toml``)."""
    return f"pylock.cp{python.replace('.', '')}-{arch}.toml"


@dataclass(frozen=True)
class LockedFile:
    """One locked package: its release and the one wheel of it the locked Python takes."""

    project: str
    version: str
    file: str
    sha256: str
    size: int
    requires_python: str | None = None

    @property
    def store_path(self) -> str:
        """Where it lies in the variant folder (the content store, named by its sha256)."""
        return index_pages.store_path(self.sha256, self.file)

    @property
    def path(self) -> str:
        """Its path relative to the lock file, which lies in the pages folder beside ``files/``."""
        return f"../{self.store_path}"


@dataclass(frozen=True)
class Lock:
    """The closure resolved for CPython ``python`` on ``arch``: one release per project."""

    python: str
    arch: str
    files: tuple[LockedFile, ...] = ()
    roots: tuple[str, ...] = ()
    """The wheels (with extras) the closure was resolved for."""

    @property
    def name(self) -> str:
        return lock_name(self.python, self.arch)

    def merged(self, files: Iterable[LockedFile], roots: Iterable[str]) -> Lock:
        """This lock with ``files`` added; a project resolved again keeps only its new release."""
        by_project = {f.project: f for f in self.files}
        by_project.update((f.project, f) for f in files)
        return replace(self, files=tuple(by_project[p] for p in sorted(by_project)),
                       roots=tuple(sorted({*self.roots, *roots})))

    def pins(self) -> list[str]:
        """``name==version`` of every locked release (pip constraint lines)."""
        return [f"{f.project}=={f.version}" for f in self.files]

    def render(self) -> str:
        q = json.dumps
        marker = f'python_version == "{self.python}" and sys_platform == "linux" and platform_machine == "{self.arch}"'
        lines = [
            f"# The dependency closure published into this index for CPython {self.python} on {self.arch}, as",
            "# resolved by `llamawheel publish`; the next publish takes exactly these files (--refresh-lock",
            "# resolves anew). Written by llamawheel: do not edit.",
            f"lock-version = {q(LOCK_VERSION)}",
            f"environments = [{q(marker)}]",
            f"requires-python = {q(f'=={self.python}.*')}",
            f"created-by = {q('llamawheel')}",
        ]
        for f in self.files:
            lines += ["", "[[packages]]", f"name = {q(f.project)}", f"version = {q(f.version)}"]
            if f.requires_python:
                lines.append(f"requires-python = {q(f.requires_python)}")
            lines.append(f"wheels = [{{ name = {q(f.file)}, path = {q(f.path)}, size = {f.size},"
                         f" hashes = {{ sha256 = {q(f.sha256)} }} }}]")
        lines += ["", "[tool.llamawheel]", f"llamawheel-version = {q(__version__)}", f"python = {q(self.python)}",
                  f"arch = {q(self.arch)}", "roots = ["]
        lines += [f"  {q(r)}," for r in self.roots]
        lines.append("]")
        return "\n".join(lines) + "\n"


def read_lock(path: Path) -> Lock:
    """A lock file written by `Lock.render` (any PEP 751 1.0 lock whose packages each have one wheel with a
    sha256 and a path into the store); refused, naming the file, when it is not one."""
    match = _LOCK_NAME.match(path.name)
    tip = "publish with --refresh-lock to resolve the closure anew and write the lock again"
    if not match:
        raise PublishError(f"{path}: not a lock file name llamawheel writes (pylock.cp311-x86_64.toml)", tip)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PublishError(f"{path}: cannot be read as TOML ({exc})", tip) from None
    if data.get("lock-version") != LOCK_VERSION:
        raise PublishError(f"{path}: lock-version is {data.get('lock-version')!r}, not {LOCK_VERSION!r}", tip)
    files = []
    for n, package in enumerate(data.get("packages", [])):
        try:
            (wheel,) = package["wheels"]
            sha = wheel["hashes"]["sha256"]
            name, wheel_path = wheel["name"], wheel["path"]
            if not re.fullmatch(r"[0-9a-f]{64}", sha) or wheel_path != f"../files/{sha}/{name}":
                raise ValueError(f"its wheel's path {wheel_path!r} is not ../files/<sha256>/<name>")
            files.append(LockedFile(str(package["name"]), str(package["version"]), str(name), str(sha),
                                    int(wheel.get("size", 0)), package.get("requires-python")))
        except (KeyError, TypeError, ValueError) as exc:
            raise PublishError(f"{path}: packages[{n}] is not a package with one wheel, its path and its sha256"
                               f" ({exc})", tip) from None
    tool = data.get("tool", {}).get("llamawheel", {})
    python = f"{match.group(1)}.{match.group(2)}"
    return Lock(python, match.group(3), tuple(files), tuple(str(r) for r in tool.get("roots", [])))


def read_locks(pages: Path) -> dict[str, Lock]:
    """The locks in a variant's pages folder, by file name (none when there is no such folder)."""
    if not pages.is_dir():
        return {}
    return {p.name: read_lock(p) for p in sorted(pages.glob("pylock.*.toml"))}


def locked_file(path: Path, sha256: str, size: int) -> LockedFile:
    meta = distmeta.read(path)
    return LockedFile(meta.project, meta.version, path.name, sha256, size, meta.requires_python)


# ----------------------------------------------------------------------------- fetching


def _take_locked(lock: Lock, store: Path | None, dest: Path, mirror: MirrorProfile, python: str,
                 platforms: Sequence[str]) -> list[Fetched]:
    """The files of ``lock`` into ``dest``: linked from the index's ``store`` (the variant folder) when there and
    of the locked bytes, else ``pip download --require-hashes`` of the locked release and file."""
    taken: list[Fetched] = []
    missing: list[LockedFile] = []
    for f in lock.files:
        target = dest / f.file
        stored = store / f.store_path if store is not None else None
        if not target.is_file() and stored is not None and stored.is_file() and fileio.sha256_of(stored) == f.sha256:
            try:
                os.link(stored, target)
            except OSError:
                try:
                    fileio.copy_file(stored, target, f.sha256)
                except fileio.ChangedWhileCopying:
                    missing.append(f)
                    continue
            taken.append(Fetched(target, "", f.sha256, target.stat().st_size))  # the bytes just checked
        elif target.is_file() and fileio.sha256_of(target) == f.sha256:
            taken.append(Fetched(target, "", f.sha256, target.stat().st_size))
        else:
            target.unlink(missing_ok=True)
            missing.append(f)
    if missing:
        log.info(f"{lock.name}: {len(missing)} locked file(s) are not in the index: fetching exactly those")
        lines = [f"{f.project}=={f.version} --hash=sha256:{f.sha256}" for f in missing]
        taken += download_pinned(lines, dest, mirror, python_version=python, platforms=tuple(platforms),
                                 expected={f.file: (f.sha256,) for f in missing}, what=f"the locked closure"
                                 f" ({lock.name})")
    return taken


def fetch(
    wheel: Path,
    *,
    extras: Sequence[str],
    python_versions: Sequence[str],
    dest: Path,
    mirror: MirrorProfile,
    constraints: Sequence[str] = (),
    locks: Mapping[str, Lock] | None = None,
    store: Path | None = None,
) -> dict[str, list[Fetched]]:
    """Download the closure of ``wheel[extras]`` for each Python version into ``dest`` (one folder for all
    versions: a wheel that serves several, like a 420 MB cuBLAS wheel, is fetched once). ``constraints``
    (pip constraint lines, see `runtime_pins`) narrow which releases are taken. Where ``locks`` (by file name,
    see `lock_name`) hold a lock for a Python, its files are taken instead of resolving (from ``store``, the
    variant folder, when there); pip resolves only what the lock does not cover.

    Returns, for each Python version, every wheel its closure holds except ``wheel`` itself, each with the URL
    it came from ('' for a file taken from the store).
    """
    meta = distmeta.read(wheel)
    platforms = platforms_for(meta.platforms)
    arch = wheel_arch(meta.platforms)
    extra_part = f"[{','.join(extras)}]" if extras else ""
    root_req = f"{meta.project}{extra_part} @ {wheel.resolve().as_uri()}"
    index = mirror.pypi_index() or "pip's configured index"
    dest.mkdir(parents=True, exist_ok=True)
    if constraints:
        log.info(f"NVIDIA runtime wheels of the release the wheel was built against: {', '.join(constraints)}")
    result: dict[str, list[Fetched]] = {}
    for version in python_versions:
        lock = (locks or {}).get(lock_name(version, arch))
        taken: list[Fetched] = []
        pins = list(constraints)
        if lock is not None:
            log.info(f"taking the locked closure for Python {version} ({lock.name}, {len(lock.files)} files):"
                     " not resolving")
            taken = _take_locked(lock, store, dest, mirror, version, platforms)
            missing = unmet_requirements(dest, wheel, extras, target_environment(version, arch),
                                         supported_tags(version, platforms))
            if not missing:
                result[version] = taken
                continue
            log.info(f"{meta.project}{extra_part} also needs {', '.join(missing)} on Python {version}, which"
                     f" {lock.name} does not hold: resolving them, the locked releases kept")
            pinned_here = {canonicalize_name(requirement_name(c)) for c in constraints}
            pins += [p for p in lock.pins() if canonicalize_name(requirement_name(p)) not in pinned_here]
        constraint_file = None
        if pins:
            constraint_file = dest / f"constraints-{version}.txt"
            constraint_file.write_text("".join(f"{c}\n" for c in pins))
        log.info(f"fetching what {meta.project}{extra_part} needs on Python {version} ({platforms[0]}) from {index}")
        fetched = fetch_settled(
            [root_req], wheel, extras, dest, mirror, python_version=version, platforms=platforms, arch=arch,
            constraint_file=constraint_file, what=f"the dependencies of {meta.project}",
            tip="narrow the versions with --python-version, refresh the lock with --refresh-lock, or publish"
                " with --no-closure",
            unsettled_tip="or publish with --no-closure and add the missing wheels yourself")
        by_name = {f.path.name: f for f in [*taken, *fetched]}
        result[version] = [by_name[n] for n in sorted(by_name) if n != wheel.name and n.endswith(".whl")]
    return result


def runtime_pins(wheel: Path) -> tuple[str, ...]:
    """The recipe's ``runtime-pins`` for a CUDA wheel in the default runtime mode (``+cu124.sm86`` -> CUDA
    12.4's; for an aarch64 wheel, that platform's ``targets`` pins), () for a CPU or ``.sys`` wheel or a CUDA version
    no recipe lists."""
    try:
        meta = distmeta.read(wheel)
        variant = Variant.parse(meta.local or "")
        if variant.cuda is None or variant.system_runtime:
            return ()
        return catalog.find_cuda(variant.cuda)[1].pins_for(wheel_arch(meta.platforms))
    except LlamawheelError:
        return ()
