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
from collections.abc import Sequence
from pathlib import Path

from llamawheel.core import log
from llamawheel.core.errors import DownloadError, LlamawheelError
from llamawheel.mirror import pipfetch
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.recipe import catalog
from llamawheel.recipe.variant import Variant
from llamawheel.wheel import distmeta
from llamawheel.wheel.policy import LEGACY_TAGS, manylinux_glibc
from llamawheel.wheel.requirements import supported_tags, target_environment, unmet_requirements

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
            pipfetch.download_for(
                requirements, dest, mirror, python_version=version, platforms=platforms,
                constraint_file=constraint_file,
                tip="narrow the versions with --python-version, or publish with --no-closure")
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
