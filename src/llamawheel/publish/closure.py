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

from collections.abc import Sequence
from pathlib import Path

from llamawheel.core import log
from llamawheel.core.errors import LlamawheelError
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.mirror.provenance import Fetched
from llamawheel.recipe import catalog
from llamawheel.recipe.variant import Variant
from llamawheel.wheel import distmeta
from llamawheel.wheel.requirements import fetch_settled, platforms_for, wheel_arch

EXTRAS = ("server",)
"""The extras whose dependencies an index carries (when the wheel declares them)."""

def fetch(
    wheel: Path,
    *,
    extras: Sequence[str],
    python_versions: Sequence[str],
    dest: Path,
    mirror: MirrorProfile,
    constraints: Sequence[str] = (),
) -> list[Fetched]:
    """Download the closure of ``wheel[extras]`` for each Python version into ``dest`` (one folder for all
    versions: a wheel that serves several, like a 420 MB cuBLAS wheel, is fetched once). ``constraints``
    (pip constraint lines, see `runtime_pins`) narrow which releases are taken.

    Returns every wheel pip resolved except ``wheel`` itself, each with the URL it came from.
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
    resolved: dict[str, Fetched] = {}
    for version in python_versions:
        log.info(f"fetching what {meta.project}{extra_part} needs on Python {version} ({platforms[0]}) from {index}")
        fetched = fetch_settled(
            [root_req], wheel, extras, dest, mirror, python_version=version, platforms=platforms, arch=arch,
            constraint_file=constraint_file, what=f"the dependencies of {meta.project}",
            tip="narrow the versions with --python-version, or publish with --no-closure",
            unsettled_tip="or publish with --no-closure and add the missing wheels yourself")
        resolved.update((f.path.name, f) for f in fetched)
    return [resolved[name] for name in sorted(resolved) if name != wheel.name and name.endswith(".whl")]


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
