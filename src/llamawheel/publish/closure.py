"""The dependency closure of a wheel: every wheel ``pip install "llama-cpp-python[server]"`` needs,
for another machine's Python and platform, fetched with ``pip download`` through the mirror profile.

pip is asked once per Python version the recipe names::

    pip download --only-binary=:all: --platform manylinux_2_35_x86_64 ... --platform manylinux2014_x86_64
                 --python-version 3.10 --implementation cp --abi cp310 "llama-cpp-python[server] @ file:///..."

pip checks wheel tags and Requires-Python against the target Python, but it evaluates environment
markers (``exceptiongroup ; python_version < "3.11"``) against the Python it runs on. So after each
download the Requires-Dist of every fetched wheel is walked again with the target's markers, and what
is missing is fetched in a further round.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from packaging import tags
from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from llamawheel.core import log
from llamawheel.core.errors import DownloadError, LlamawheelError
from llamawheel.core.proc import CommandFailed, run_streamed
from llamawheel.mirror.pipfetch import show_pip_line
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.recipe import catalog
from llamawheel.recipe.variant import Variant
from llamawheel.wheel import distmeta
from llamawheel.wheel.policy import LEGACY_TAGS, manylinux_glibc

EXTRAS = ("server",)
"""The extras whose dependencies an index carries (when the wheel declares them)."""

MAX_ROUNDS = 6
_LEGACY = {name: glibc[1] for name, glibc in LEGACY_TAGS.items()}


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
    folder: Path, root: Path, root_extras: Sequence[str], env: dict[str, str], supported: frozenset[Tag]
) -> list[str]:
    """Requirements reachable from ``root[root_extras]`` under the marker values ``env`` that no wheel in
    ``folder`` with a ``supported`` tag meets."""
    dists: dict[str, list[tuple[Version, Path]]] = {}
    for path in folder.glob("*.whl"):
        try:
            name, version, _, wheel_tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        if wheel_tags & supported:
            dists.setdefault(str(name), []).append((version, path))
    unmet: list[str] = []
    queue: list[tuple[Path, set[str]]] = [(root, {distmeta.normalize(e) for e in root_extras})]
    seen: set[tuple[Path, frozenset[str]]] = set()
    while queue:
        path, extras = queue.pop()
        if (path, frozenset(extras)) in seen:
            continue
        seen.add((path, frozenset(extras)))
        for line in distmeta.read(path).requires_dist:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                log.warn(f"{path.name}: ignoring a malformed Requires-Dist line: {line}")
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


def fetch(
    wheel: Path,
    *,
    extras: Sequence[str],
    python_versions: Sequence[str],
    dest: Path,
    mirror: MirrorProfile,
    constraints: Sequence[str] = (),
) -> list[Path]:
    """Download the closure of ``wheel[extras]`` for each Python version into ``dest`` (one folder for all
    versions: a wheel that serves several, like a 420 MB cuBLAS wheel, is fetched once). ``constraints``
    (pip constraint lines, see `runtime_pins`) narrow which releases are taken.

    Returns every fetched wheel except ``wheel`` itself.
    """
    meta = distmeta.read(wheel)
    platforms = platforms_for(meta.platforms)
    arch = wheel_arch(meta.platforms)
    extra_part = f"[{','.join(extras)}]" if extras else ""
    root_req = f"{meta.project}{extra_part} @ {wheel.resolve().as_uri()}"
    index = mirror.pypi_index() or "pip's configured index"
    dest.mkdir(parents=True, exist_ok=True)
    constraint_file = None
    if constraints:
        constraint_file = dest / "constraints.txt"
        constraint_file.write_text("".join(f"{c}\n" for c in constraints))
        log.info(f"NVIDIA runtime wheels of the release the wheel was built against: {', '.join(constraints)}")
    for version in python_versions:
        log.info(f"fetching what {meta.project}{extra_part} needs on Python {version} ({platforms[0]}) from {index}")
        requirements = [root_req]
        supported = supported_tags(version, platforms)
        for _ in range(MAX_ROUNDS):
            _pip_download(requirements, dest, version, platforms, mirror, constraint_file)
            requirements = unmet_requirements(dest, wheel, extras, target_environment(version, arch), supported)
            if not requirements:
                break
            log.info(f"Python {version} also needs {', '.join(requirements)} (markers for that Python): fetching")
        else:
            raise DownloadError(
                f"the dependencies of {meta.project} for Python {version} did not settle after {MAX_ROUNDS} rounds:"
                f" still missing {', '.join(requirements)}",
                "try another --mirror; or publish with --no-closure and add the missing wheels yourself",
            )
    return [p for p in sorted(dest.glob("*.whl")) if p.name != wheel.name]


def _pip_download(
    requirements: Sequence[str], folder: Path, version: str, platforms: Sequence[str], mirror: MirrorProfile,
    constraint_file: Path | None = None,
) -> None:
    abi = "cp" + version.replace(".", "")
    cmd = [
        sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--progress-bar", "off",
        "--dest", str(folder), "--python-version", version, "--implementation", "cp", "--abi", abi,
    ]
    for platform in platforms:
        cmd += ["--platform", platform]
    if constraint_file is not None:
        cmd += ["--constraint", str(constraint_file)]
    try:
        run_streamed([*cmd, *requirements], env=mirror.pip_env(), on_line=show_pip_line)
    except CommandFailed as exc:
        index = mirror.pypi_index() or "pip's configured index"
        raise DownloadError(
            f"could not fetch the dependencies for Python {version} from {index}\n{exc.describe()}",
            f"check that the index answers (llamawheel mirrors check {mirror.name}) and offers wheels for Python"
            f" {version}; narrow the versions with --python-version, or publish with --no-closure",
        ) from None


def runtime_pins(wheel: Path) -> tuple[str, ...]:
    """The recipe's ``runtime-pins`` for a CUDA wheel in the default runtime mode (``+cu124.sm86`` -> CUDA
    12.4's), () for a CPU or ``.sys`` wheel or a CUDA version no recipe lists."""
    try:
        variant = Variant.parse(distmeta.read(wheel).local or "")
        if variant.cuda is None or variant.system_runtime:
            return ()
        return catalog.find_cuda(variant.cuda)[1].runtime_pins
    except LlamawheelError:
        return ()
