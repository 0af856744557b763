"""What a wheel needs on another machine's Python: its Requires-Dist walked with that Python's marker values
and wheel tags (``pip download --python-version`` checks tags and Requires-Python for the target, but evaluates
markers such as ``exceptiongroup ; python_version < "3.11"`` against the Python pip runs on), and
`fetch_settled`, which downloads in rounds until that walk finds nothing missing (the index closure and the build
root's wheelhouse both use it)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from packaging import tags
from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from llamawheel.core import log
from llamawheel.core.errors import DownloadError
from llamawheel.mirror import pipfetch, provenance
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.mirror.provenance import Fetched
from llamawheel.wheel import distmeta
from llamawheel.wheel.policy import LEGACY_TAGS, manylinux_glibc

MAX_ROUNDS = 6
_LEGACY = {name: glibc[1] for name, glibc in LEGACY_TAGS.items()}




def target_environment(python_version: str, arch: str) -> dict[str, str]:
    """Marker values for a CPython ``python_version`` on Linux ``arch``."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python_version}.0",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": arch,
    }


def _active(req: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    if req.marker is None:
        return True
    try:
        return any(req.marker.evaluate({**env, "extra": e}) for e in {"", *extras})
    except UndefinedEnvironmentName:
        return True


def supported_tags(python_version: str, platforms: Sequence[str]) -> frozenset[Tag]:
    """The wheel tags CPython ``python_version`` accepts on ``platforms`` (what ``pip --python-version`` uses)."""
    major, minor = (int(x) for x in python_version.split("."))
    interpreter = f"cp{major}{minor}"
    return frozenset((
        *tags.cpython_tags((major, minor), abis=[interpreter], platforms=platforms),
        *tags.compatible_tags((major, minor), interpreter, platforms),
    ))


def unmet_requirements(
    folder: Path, root: Path | Sequence[str], root_extras: Sequence[str], env: dict[str, str],
    supported: frozenset[Tag],
) -> list[str]:
    """Requirements reachable from ``root[root_extras]`` (a wheel, or requirement lines) under the marker
    values ``env`` that no wheel in ``folder`` with a ``supported`` tag meets."""
    dists: dict[str, list[tuple[Version, Path]]] = {}
    for found in folder.glob("*.whl"):
        try:
            name, version, _, wheel_tags = parse_wheel_filename(found.name)
        except InvalidWheelFilename:
            continue
        if wheel_tags & supported:
            dists.setdefault(str(name), []).append((version, found))
    top = [] if isinstance(root, Path) else list(root)
    unmet: list[str] = []
    queue: list[tuple[Path | None, set[str]]] = [
        (root if isinstance(root, Path) else None, {distmeta.normalize(e) for e in root_extras})]
    seen: set[tuple[Path | None, frozenset[str]]] = set()
    while queue:
        path, extras = queue.pop()
        if (path, frozenset(extras)) in seen:
            continue
        seen.add((path, frozenset(extras)))
        lines = distmeta.read(path).requires_dist if path is not None else top
        for line in lines:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                log.warn(f"{path.name if path else 'requirements'}: ignoring a malformed Requires-Dist line: {line}")
                continue
            if not _active(req, env, extras):
                continue
            candidates = dists.get(str(canonicalize_name(req.name)), [])
            fits = sorted((d for d in candidates if req.specifier.contains(d[0], prereleases=True)), reverse=True)
            if fits:
                queue.append((fits[0][1], {distmeta.normalize(e) for e in req.extras}))
            else:
                wanted = f"{req.name}[{','.join(sorted(req.extras))}]" if req.extras else req.name
                unmet.append(f"{wanted}{req.specifier}")
    return sorted(set(unmet))


def _glibc_and_arch(wheel_platforms: Sequence[str]) -> tuple[int | None, str, list[str]]:
    glibc: int | None = None
    arch, other = "x86_64", []
    for tag in wheel_platforms:
        if (version := manylinux_glibc(tag)) and version[0] == 2:
            minor, arch = version[1], re.sub(r"^manylinux(_\d+_\d+|1|2010|2014)_", "", tag)
        else:
            if tag != "any":
                other.append(tag)
                arch = tag.split("_", 1)[1] if "_" in tag else arch
            continue
        glibc = minor if glibc is None else max(glibc, minor)
    return glibc, arch, other


def platforms_for(wheel_platforms: Sequence[str]) -> tuple[str, ...]:
    """The ``--platform`` values for a wheel's own tags: every manylinux tag a machine that runs the wheel
    accepts, newest first (pip prefers earlier ones). ``manylinux_2_35_x86_64`` gives manylinux_2_35 down
    to manylinux_2_5 plus the legacy aliases (manylinux2014 ...); a wheel without a manylinux tag (a plain
    ``linux_x86_64``) keeps its own tag and gets the manylinux2014 baseline."""
    glibc, arch, other = _glibc_and_arch(wheel_platforms)
    newest = glibc if glibc is not None else 17
    aliases = {m: alias for alias, m in _LEGACY.items()}
    tags: list[str] = []
    for m in range(newest, 4, -1):
        tags.append(f"manylinux_2_{m}_{arch}")
        if m in aliases:
            tags.append(f"{aliases[m]}_{arch}")
    return (*other, *tags)


def wheel_arch(wheel_platforms: Sequence[str]) -> str:
    """The machine a wheel's platform tags name (``x86_64`` when they name none)."""
    return _glibc_and_arch(wheel_platforms)[1]


def fetch_settled(
    first: Sequence[str], root: Path | Sequence[str], root_extras: Sequence[str], folder: Path,
    mirror: MirrorProfile, *, python_version: str, platforms: Sequence[str], arch: str = "x86_64",
    constraint_file: Path | None = None, what: str, tip: str, unsettled_tip: str,
) -> list[Fetched]:
    """``pip download`` ``first`` into ``folder`` as CPython ``python_version`` on ``platforms``, then, round by
    round, what ``root[root_extras]`` still needs under that Python's markers, until nothing is missing; returns
    the files pip resolved (each with its URL), also recorded in ``folder``'s ``origins.json``."""
    env = target_environment(python_version, arch)
    supported = supported_tags(python_version, platforms)
    wanted = list(first)
    resolved: list[Fetched] = []
    for _ in range(MAX_ROUNDS):
        resolved += pipfetch.download_for(wanted, folder, mirror, python_version=python_version,
                                          platforms=platforms, constraint_file=constraint_file, tip=tip)
        wanted = unmet_requirements(folder, root, root_extras, env, supported)
        if not wanted:
            provenance.record_origins(folder, resolved)
            return resolved
        log.info(f"Python {python_version} also needs {', '.join(wanted)} (markers for that Python): fetching")
    raise DownloadError(
        f"{what} for Python {python_version} did not settle after {MAX_ROUNDS} rounds: still missing"
        f" {', '.join(wanted)}",
        f"try another --mirror; {unsettled_tip}",
    )
