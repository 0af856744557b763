"""The wheelhouse of a build: the source's build requirements (scikit-build-core), CMake, ninja and a current
pip, as wheels for the Python that builds (a build root's, or this machine's), fetched on this machine through
the mirror profile and recorded with their URLs. The build's pip reads only this folder, with no index (and, in
a root, the network cut)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from llamawheel.core import fileio, log, paths
from llamawheel.core.compat import tomllib
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.mirror.provenance import Fetched
from llamawheel.toolchain.buildroot import HOST, Suite
from llamawheel.wheel.requirements import fetch_settled, platforms_for

BUILD_TOOLS = ("pip", "cmake>=3.21", "ninja")
"""Beside the sdist's own build requirements: a pip that knows ``-C`` (Debian 11's is 20.3), and the CMake and
ninja that scikit-build-core asks for when the root has none (Debian 11's CMake 3.18 is too old)."""


def build_requirements(source: Path) -> list[str]:
    """``[build-system] requires`` of the source tree (scikit-build-core for llama-cpp-python)."""
    pyproject = source / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text()) if pyproject.is_file() else {}
    return [str(r) for r in data.get("build-system", {}).get("requires", ["setuptools", "wheel"])]


def host_target() -> Suite:
    """This machine as a wheelhouse target: its Python and glibc."""
    glibc = os.confstr("CS_GNU_LIBC_VERSION") or "glibc 2.17"
    major, minor = (int(n) for n in glibc.split()[-1].split(".")[:2])
    return Suite(HOST, "", (major, minor), 0, f"{sys.version_info.major}.{sys.version_info.minor}")


def fetch(source: Path, suite: Suite, mirror: MirrorProfile) -> tuple[Path, list[Fetched]]:
    """The wheelhouse for building ``source`` in a ``suite`` root, filled through ``mirror``; returns the folder
    and the files in it this build's pip will take (each with its URL and sha256)."""
    folder = paths.cache_dir() / "wheelhouse" / f"{suite.name}-py{suite.python}"
    wanted = [*build_requirements(source), *BUILD_TOOLS]
    platforms = platforms_for([f"manylinux_2_{suite.glibc[1]}_x86_64"])
    where = "this machine" if suite.name == HOST else f"the {suite.name} root"
    log.info(f"fetching the build requirements for {where} (Python {suite.python}): "
             f"{', '.join(wanted)} ({mirror.name} mirror)")
    folder.mkdir(parents=True, exist_ok=True)
    with fileio.locked(folder):
        files = fetch_settled(wanted, wanted, (), folder, mirror, python_version=suite.python,
                              platforms=platforms, what="the build requirements",
                              tip="or build on this machine as it is: --build-env host",
                              unsettled_tip="or --build-env host")
    return folder, files
