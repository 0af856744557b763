"""What a wheel needs on another machine's Python: its Requires-Dist walked with that Python's marker values
and wheel tags (``pip download --python-version`` checks tags and Requires-Python for the target, but evaluates
markers such as ``exceptiongroup ; python_version < "3.11"`` against the Python pip runs on)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from packaging import tags
from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from llamawheel.core import log
from llamawheel.wheel import distmeta


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
