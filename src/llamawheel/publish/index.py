"""The private wheel index: one static PEP 503 tree per variant (``cu130``, ``cpu``), holding the
published wheels and every wheel they need at install time, so that
``pip install --index-url file:///.../wheels/cu130/simple "llama-cpp-python[server]"`` works offline.

Layout of an index folder (``wheels/`` by default)::

    index.html                          the variants, and the exact pip command for each
    .publish.lock                       publishers take it in turn (fcntl), bundling too
    cu130/
      files/<sha256>/<wheel>            the content store: written once (temp file + rename), never overwritten
      files/<sha256>/<wheel>.metadata   the wheel's METADATA (PEP 658/714)
      files/<sha256>/<wheel>.json       the build manifest, when the wheel had one beside it
      .generation-<time>-<id>/          one complete set of pages (+ .llamawheel.json, what they list)
      simple -> .generation-<time>-<id> the index pip reads: a symlink, swapped with os.replace
      simple/pylock.cp311-x86_64.toml   the closure as resolved for one Python on one machine (PEP 751 lock,
                                        see `closure`): the next publish takes exactly these files

How a publish stays safe when it is killed at any point: a wheel reaches the store under a temporary
name and is renamed into place only when complete and hashed; a store entry is named by its sha256, so a
file the current pages list is never rewritten (not even by ``--force``); the new pages are written into
a fresh generation folder, and only the rename of a new symlink over ``simple`` makes them visible. Until
that rename pip sees the previous generation, which lists only complete files; after it, the new one.
What a killed run leaves behind (a temporary file, an unlisted store entry, an unused generation) is
listed by ``index check`` as an orphan and removed by the next publish. Generations sit beside
``simple`` so that ``../../files`` means the same folder whether a path is resolved as a URL or on disk.

This module publishes; `index_pages` renders the pages, `index_check` verifies an index and
`share` bundles, serves and uploads it; `closure` fetches the dependencies.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from llamawheel.core import fileio, log, paths
from llamawheel.core.errors import PublishError, UsageError
from llamawheel.core.redact import redact
from llamawheel.mirror import profiles
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.pipeline import manifest, server
from llamawheel.publish import closure
from llamawheel.publish.index_pages import (
    IndexedFile,
    VariantState,
    install_commands,
    project_page,
    root_page,
    top_page,
)
from llamawheel.recipe import catalog
from llamawheel.wheel import distmeta
from llamawheel.wheel.requirements import wheel_arch

STATE_FILE = ".llamawheel.json"
GENERATION_PREFIX = ".generation-"
SWAP_PREFIX = ".swap-"
INCOMING_PREFIX = ".incoming-"


# ----------------------------------------------------------------------------- reading an index


def variant_dirs(root: Path) -> list[Path]:
    """The variant folders of an index folder (or ``root`` itself when it is one variant's folder)."""
    if _has_pages(root):
        return [root]
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and _has_pages(d))


def _has_pages(folder: Path) -> bool:
    simple = folder / "simple"
    return simple.is_symlink() or simple.is_dir()


def load_state(vdir: Path) -> VariantState:
    """What the current pages of ``vdir`` list (nothing yet when the variant has never been published)."""
    simple = vdir / "simple"
    if not _has_pages(vdir):
        return VariantState(vdir.name)
    if not simple.exists():
        raise PublishError(
            f"{simple} points to {os.readlink(simple)}, which is missing",
            f"run llamawheel index check {vdir.parent}; to start this variant afresh, remove {vdir}",
        )
    state_file = simple / STATE_FILE
    try:
        return VariantState.from_json(state_file.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PublishError(
            f"{state_file} cannot be read ({exc}): {vdir} is not an index that llamawheel wrote",
            "publish into another folder with --index DIR, or move this one away",
        ) from None


def python_versions_for(variant: str) -> tuple[str, ...]:
    """The Python versions the recipe behind ``variant`` names (``cu130`` -> cuda-13, ``cpu`` -> cpu)."""
    for recipe in catalog.all_recipes().values():
        if (recipe.kind == "cpu" and variant == "cpu") or any(m.tag == variant for m in recipe.minors.values()):
            return recipe.python_versions
    raise PublishError(
        f"no recipe builds the variant '{variant}', so the Python versions to fetch dependencies for are unknown",
        "name them with --python-version 3.12 (repeat it for several), or publish with --no-closure",
    )


@contextmanager
def publish_lock(root: Path) -> Iterator[None]:
    """One publisher (or bundler) at a time per index folder; the others wait."""
    root.mkdir(parents=True, exist_ok=True)

    def waiting() -> None:
        log.info(f"another publish to {root} is running: waiting for it to finish")

    with fileio.locked(root / ".publish", on_wait=waiting):
        yield


# ----------------------------------------------------------------------------- publishing


@dataclass(frozen=True)
class _Candidate:
    path: Path
    meta: distmeta.WheelMetadata
    sha256: str
    size: int
    direct: bool
    origin: str = ""

    @classmethod
    def of(cls, path: Path, direct: bool, origin: str = "") -> _Candidate:
        if direct and not origin:
            built = manifest_origin(path)
            origin = built or f"published from {path.name}, which has no build manifest beside it"
        return cls(path, distmeta.read(path), fileio.sha256_of(path), path.stat().st_size, direct, origin)

    def indexed(self) -> IndexedFile:
        extras = tuple(e for e in closure.EXTRAS if e in self.meta.provides_extra) if self.direct else ()
        return IndexedFile(
            name=self.path.name, project=self.meta.project, version=self.meta.version, sha256=self.sha256,
            size=self.size, metadata_sha256=hashlib.sha256(self.meta.raw).hexdigest(),
            requires_python=self.meta.requires_python, direct=self.direct, extras=extras, origin=self.origin,
        )


def manifest_origin(wheel: Path) -> str:
    """For a wheel llamawheel built: "llamawheel build" with its recipe and build environment, from the manifest
    beside it ('' when there is none)."""
    try:
        data = json.loads(manifest.path_for(wheel).read_text())
    except (OSError, ValueError):
        return ""
    env = data.get("build_env", {}).get("name", "")
    return f"llamawheel build of recipe {data.get('recipe', {}).get('name', '?')}" + (f" in {env}" if env else "")


@dataclass(frozen=True)
class PublishResult:
    """What one publish did to one variant."""

    variant: str
    index_url: str
    state: VariantState
    added: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()


def publish(
    wheels: Sequence[Path],
    *,
    index_root: Path | None = None,
    mirror: MirrorProfile | None = None,
    force: bool = False,
    with_closure: bool = True,
    python_versions: Sequence[str] | None = None,
    refresh_lock: bool = False,
) -> list[PublishResult]:
    """Add ``wheels`` (and, unless ``with_closure`` is false, everything they need) to their variants' indexes.

    The same file again is a no-op; a different file under a published name is refused unless ``force``.
    ``python_versions`` overrides the recipe's list of Python versions to fetch dependencies for. Where the
    variant has a lock for a Python, its files are taken instead of resolving; ``refresh_lock`` resolves anew.
    """
    root = (index_root or paths.wheels_dir()).resolve()
    profile = mirror or profiles.load_profile(None)
    groups: dict[str, list[Path]] = {}
    companions: list[Path] = []
    for wheel in wheels:
        if wheel.suffix != ".whl" or not wheel.is_file():
            raise UsageError(f"{wheel}: no such wheel file", "pass paths of .whl files (wheels/*.whl)")
        meta = distmeta.read(wheel)
        if meta.project == COMPANION:
            companions.append(wheel.resolve())
            continue
        groups.setdefault(_variant_of(meta), []).append(wheel.resolve())
    if not groups:
        if companions:
            raise UsageError(f"{companions[0].name} goes with the llama-cpp-python wheels of its release: publish it "
                             "together with them (it is added to each of their variants' indexes)")
        raise UsageError("no wheels to publish", "build one first (llamawheel build 13 --arch 86) or pass paths")
    for group in groups.values():  # the server of a release serves every variant of it
        group += companions
    results = []
    with publish_lock(root):
        for variant, group in groups.items():
            results.append(_publish_variant(root, variant, group, profile, force, with_closure, python_versions,
                                            refresh_lock))
        write_top_page(root)
    return results


COMPANION = server.PROJECT
"""llama.cpp's own server (`llamawheel.pipeline.server`): no variant of its own, published beside the llama-cpp-python
wheels it runs on; its one requirement is theirs, so it brings no closure."""


def _variant_of(meta: distmeta.WheelMetadata) -> str:
    if not meta.local:
        raise PublishError(
            f"{meta.filename} has no local version label (+cu130, +cpu): cannot tell which variant index it belongs to",
            "publish wheels that llamawheel built (llamawheel build 13 / cpu), whose version says what they are",
        )
    if not meta.variant:
        raise PublishError(f"{meta.filename}: local version label '{meta.local}' does not start with a usable"
                           " variant name")
    return meta.variant


def _publish_variant(
    root: Path,
    variant: str,
    wheels: list[Path],
    mirror: MirrorProfile,
    force: bool,
    with_closure: bool,
    python_versions: Sequence[str] | None,
    refresh_lock: bool = False,
) -> PublishResult:
    """Publish ``wheels`` (and, with ``with_closure``, what they need) into the index of ``variant``; the
    variant's locks are used (unless ``refresh_lock``) and written again with what was resolved."""
    vdir = _variant_dir(root, variant)
    current = load_state(vdir)
    _sweep(vdir, current)
    try:
        current_locks = closure.read_locks(vdir / "simple")
    except PublishError:
        if not refresh_lock:
            raise
        current_locks = {}  # a damaged lock is what --refresh-lock is for
    locks = dict(current_locks)
    found = _dedupe([_Candidate.of(w, direct=True) for w in wheels])
    if with_closure and not force:
        _refuse_conflicts(current, found, force)  # before a long download, not only after it
    pythons = tuple(current.python_versions)
    incoming = Path(tempfile.mkdtemp(prefix=INCOMING_PREFIX, dir=vdir))
    try:
        if with_closure:
            wanted = tuple(python_versions or python_versions_for(variant))
            pythons = tuple(sorted({*pythons, *wanted}, key=lambda v: [int(x) for x in v.split(".")]))
            found, resolved = _fetch_closure(found, wanted, incoming, mirror, {} if refresh_lock else current_locks,
                                             vdir)
        _refuse_conflicts(current, found, force)
        merged = _merge(current, found)
        for c in found:
            _store(vdir, c, merged.files[c.path.name])
        state = VariantState(variant, tuple(merged.files.values()), pythons)
        if with_closure:
            locks = _new_locks({} if refresh_lock else current_locks, resolved, merged.files)
        changed = bool(merged.added or merged.replaced) or _texts(locks) != _texts(current_locks)
        _commit(vdir, current, state, changed, locks)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    url = f"{root.as_uri()}/{variant}/simple"
    return PublishResult(
        variant, url, state, tuple(sorted(merged.added)), tuple(sorted(merged.replaced)),
        tuple(sorted(merged.unchanged)), tuple(install_commands(state, url)),
    )


def _variant_dir(root: Path, variant: str) -> Path:
    """The folder of ``variant`` under ``root``, created when new; refused when ``simple`` is not our link."""
    vdir = root / variant
    vdir.mkdir(exist_ok=True)
    simple = vdir / "simple"
    if simple.exists() and not simple.is_symlink():
        raise PublishError(
            f"{simple} is a plain folder (an unpacked bundle?), not the link llamawheel publishes through",
            "publish on the machine that holds the original index and bundle it again, or pass another --index",
        )
    return vdir


_Resolved = list[tuple[_Candidate, str, list[_Candidate]]]
"""For each published wheel and Python version: the closure taken for it."""


def _fetch_closure(
    found: list[_Candidate], wanted: tuple[str, ...], incoming: Path, mirror: MirrorProfile,
    locks: dict[str, closure.Lock], vdir: Path,
) -> tuple[list[_Candidate], _Resolved]:
    """``found`` plus every wheel it needs for the Python versions ``wanted``, fetched into ``incoming`` (the
    locked files where ``locks`` has a lock for the Python); and what each wheel took for each Python."""
    out = list(found)
    resolved: _Resolved = []
    for n, c in enumerate(found):
        if c.meta.project == COMPANION:
            continue
        by_python = closure.fetch(
            c.path, extras=c.indexed().extras, python_versions=wanted, dest=incoming / str(n), mirror=mirror,
            constraints=closure.runtime_pins(c.path), locks=locks, store=vdir,
        )
        seen: dict[str, _Candidate] = {}
        for python, fetched in by_python.items():
            taken = [seen.setdefault(f.path.name, _Candidate.of(f.path, direct=False, origin=f.url)) for f in fetched]
            resolved.append((c, python, taken))
        out += seen.values()
    return _dedupe(out), resolved


def _new_locks(current: dict[str, closure.Lock], resolved: _Resolved,
               files: dict[str, IndexedFile]) -> dict[str, closure.Lock]:
    """The locks after a publish: each one merged with what was taken for its Python (a project taken again
    keeps only its new release), without files the pages no longer list."""
    locks = dict(current)
    for c, python, taken in resolved:
        arch = wheel_arch(c.meta.platforms)
        name = closure.lock_name(python, arch)
        lock = locks.get(name) or closure.Lock(python, arch)
        extras = f"[{','.join(c.indexed().extras)}]" if c.indexed().extras else ""
        locks[name] = lock.merged(
            [closure.LockedFile(t.meta.project, t.meta.version, t.path.name, t.sha256, t.size, t.meta.requires_python)
             for t in taken], [c.path.name + extras])
    for name, lock in locks.items():
        kept = tuple(f for f in lock.files if f.file in files and files[f.file].sha256 == f.sha256)
        locks[name] = replace(lock, files=kept)
    return locks


def _texts(locks: dict[str, closure.Lock]) -> dict[str, str]:
    return {name: lock.render() for name, lock in locks.items()}


@dataclass
class _Merged:
    """The files the new pages list (by name), and which names are added, replaced or unchanged."""

    files: dict[str, IndexedFile]
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _merge(current: VariantState, found: list[_Candidate]) -> _Merged:
    """Merge ``found`` into what the current pages list (a file found again keeps its direct flag and extras)."""
    merged = _Merged({f.name: f for f in current.files})
    for c in found:
        new = c.indexed()
        old = merged.files.get(new.name)
        if old is None:
            merged.added.append(new.name)
        elif old.sha256 != new.sha256:
            merged.replaced.append(new.name)
        else:
            new = replace(old, direct=old.direct or new.direct, extras=old.extras or new.extras)
            if new == old:
                merged.unchanged.append(new.name)
            else:
                merged.added.append(new.name)
        merged.files[new.name] = new
    return merged


def _commit(vdir: Path, current: VariantState, state: VariantState, changed: bool,
            locks: dict[str, closure.Lock]) -> None:
    """Unless nothing changed, make ``state`` (and ``locks``) visible: a new generation, the symlink swap, then
    the sweep."""
    if changed or state.python_versions != current.python_versions:
        generation = _write_generation(vdir, state, locks)
        _swap(vdir, generation)
        _sweep(vdir, state)
    else:
        log.info(f"{state.variant}: nothing new, every file is already published")


def _dedupe(found: list[_Candidate]) -> list[_Candidate]:
    out: dict[str, _Candidate] = {}
    for c in found:
        seen = out.get(c.path.name)
        if seen is not None and seen.sha256 != c.sha256:
            raise PublishError(
                f"two different files are both named {c.path.name}: {seen.path} and {c.path}",
                "a file name must always mean the same bytes; publish one of them",
            )
        if seen is None or (c.direct and not seen.direct):
            out[c.path.name] = c
    return list(out.values())


def _refuse_conflicts(current: VariantState, found: list[_Candidate], force: bool) -> None:
    published = {f.name: f for f in current.files}
    clashes = [c for c in found if c.path.name in published and published[c.path.name].sha256 != c.sha256]
    if not clashes or force:
        for c in clashes:
            log.warn(f"replacing {c.path.name} (sha256 {published[c.path.name].sha256[:12]}… -> {c.sha256[:12]}…)")
        return
    lines = "\n".join(
        f"    {c.path.name}: published {published[c.path.name].sha256}, this file {c.sha256}" for c in clashes
    )
    raise PublishError(
        f"{len(clashes)} file(s) are already published under the same name with other contents:\n{lines}",
        "a published name must always mean the same bytes (pip caches and hash-pinned requirements rely on it): "
        "give the new build another local version, or pass --force to replace the published file",
    )


def _store(vdir: Path, c: _Candidate, entry: IndexedFile) -> None:
    """Put ``c`` (and its METADATA, and its build manifest) into the content store, unless already there."""
    folder = vdir / entry.store_path.rsplit("/", 1)[0]
    folder.mkdir(parents=True, exist_ok=True)
    final = vdir / entry.store_path
    if not (final.is_file() and final.stat().st_size == c.size and fileio.sha256_of(final) == c.sha256):
        # New, or a damaged copy of the same file (index check names those): rewriting it with the bytes
        # its link's hash names is safe, a reader sees the damaged file or the right one.
        log.info(f"{vdir.name}: storing {c.path.name} ({log.human_size(c.size)})")
        if c.direct:
            try:
                fileio.copy_file(c.path, final, c.sha256, durable=True)
            except fileio.ChangedWhileCopying:
                raise PublishError(f"{c.path} changed while it was being published", "publish it again") from None
        else:  # fetched into this variant's .incoming-* folder: complete, on the same file system
            fileio.move_file(c.path, final, durable=True)
    extras = {final.name + ".metadata": c.meta.raw}
    built = manifest.path_for(c.path)
    if c.direct and built.is_file():
        extras[final.name + ".json"] = redact(built.read_text()).encode()  # a manifest written by hand, or before
    for name, data in extras.items():
        target = folder / name
        if not (target.is_file() and target.read_bytes() == data):
            fileio.write_file(target, data, durable=True)
    fileio.fsync_dir(folder)


def _write_generation(vdir: Path, state: VariantState, locks: dict[str, closure.Lock]) -> Path:
    """Write every page of ``state``, and ``locks``, into a fresh generation folder (nobody reads it until
    `_swap`)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    generation = Path(tempfile.mkdtemp(prefix=f"{GENERATION_PREFIX}{stamp}-", dir=vdir))
    os.chmod(generation, 0o755)
    projects = state.projects()
    pages = {"index.html": root_page(projects), STATE_FILE: state.to_json(), **_texts(locks)}
    for project, files in projects.items():
        pages[f"{project}/index.html"] = project_page(project, files)
    for rel, text in pages.items():
        target = generation / rel
        target.parent.mkdir(exist_ok=True)
        fileio.write_file(target, text.encode(), durable=True)
    for folder in {generation, *(generation / p for p in projects)}:
        fileio.fsync_dir(folder)
    return generation


def _swap(vdir: Path, generation: Path) -> None:
    """Make ``generation`` the index pip sees: one rename of a new symlink over ``simple``."""
    link = vdir / f"{SWAP_PREFIX}{secrets.token_hex(4)}"
    os.symlink(generation.name, link)
    os.replace(link, vdir / "simple")
    fileio.fsync_dir(vdir)


def _sweep(vdir: Path, state: VariantState) -> None:
    """Remove what the current pages do not use: old generations, leftovers of killed runs, replaced files."""
    simple = vdir / "simple"
    current = os.readlink(simple) if simple.is_symlink() else None
    for entry in vdir.iterdir():
        name = entry.name
        if name.startswith(SWAP_PREFIX):
            entry.unlink(missing_ok=True)
        elif (name.startswith(GENERATION_PREFIX) and name != current) or name.startswith(INCOMING_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
    keep: dict[str, set[str]] = {}
    for f in state.files:
        keep.setdefault(f.sha256, set()).update({f.name, f.name + ".metadata", f.name + ".json"})
    store = vdir / "files"
    for folder in store.iterdir() if store.is_dir() else []:
        if not folder.is_dir():
            folder.unlink(missing_ok=True)
            continue
        if folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        for item in folder.iterdir():
            if item.name not in keep[folder.name]:
                item.unlink(missing_ok=True)


def write_top_page(root: Path) -> None:
    """The index folder's ``index.html``: every variant and the pip command for it."""
    states = [load_state(v) for v in variant_dirs(root) if v != root]
    fileio.write_file(root / "index.html", top_page(states, root.resolve().as_uri()).encode(), durable=True)
