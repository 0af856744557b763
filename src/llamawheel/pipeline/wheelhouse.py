"""The wheelhouse of a build root: the source's build requirements (scikit-build-core), CMake, ninja and a
current pip, as wheels for the root's Python, fetched on this machine through the mirror profile. The root's
pip reads only this folder, with no index and the network cut."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamawheel.core import fileio, log, paths
from llamawheel.core.compat import tomllib
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.toolchain.buildroot import Suite
from llamawheel.wheel.requirements import fetch_settled, platforms_for

BUILD_TOOLS = ("pip", "cmake>=3.21", "ninja")
"""Beside the sdist's own build requirements: a pip that knows ``-C`` (Debian 11's is 20.3), and the CMake and
ninja that scikit-build-core asks for when the root has none (Debian 11's CMake 3.18 is too old)."""


def build_requirements(source: Path) -> list[str]:
    """``[build-system] requires`` of the source tree (scikit-build-core for llama-cpp-python)."""
    pyproject = source / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text()) if pyproject.is_file() else {}
    return [str(r) for r in data.get("build-system", {}).get("requires", ["setuptools", "wheel"])]


def fetch(source: Path, suite: Suite, mirror: MirrorProfile) -> tuple[Path, list[dict[str, Any]]]:
    """The wheelhouse for building ``source`` in a ``suite`` root, filled through ``mirror``; returns the folder
    and, for the manifest, each file in it with its sha256."""
    folder = paths.cache_dir() / "wheelhouse" / f"{suite.name}-py{suite.python}"
    wanted = [*build_requirements(source), *BUILD_TOOLS]
    platforms = platforms_for([f"manylinux_2_{suite.glibc[1]}_x86_64"])
    log.info(f"fetching the build requirements for the {suite.name} root (Python {suite.python}): "
             f"{', '.join(wanted)} ({mirror.name} mirror)")
    folder.mkdir(parents=True, exist_ok=True)
    with fileio.locked(folder):
        fetch_settled(wanted, wanted, (), folder, mirror, python_version=suite.python, platforms=platforms,
                      what="the build requirements", tip="or build on this machine as it is: --build-env host",
                      unsettled_tip="or --build-env host")
    files = [{"file": f.name, "sha256": fileio.sha256_of(f)} for f in sorted(folder.glob("*.whl"))]
    return folder, files
