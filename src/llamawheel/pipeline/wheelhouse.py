"""The wheelhouse of a build root: the source's build requirements (scikit-build-core), CMake, ninja and a
current pip, as wheels for the root's Python, fetched on this machine through the mirror profile. The root's
pip reads only this folder, with no index and the network cut."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamawheel.core import fileio, log, paths
from llamawheel.core.compat import tomllib
from llamawheel.core.errors import DownloadError
from llamawheel.mirror import pipfetch
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.toolchain.buildroot import Suite
from llamawheel.wheel.requirements import supported_tags, target_environment, unmet_requirements

BUILD_TOOLS = ("pip", "cmake>=3.21", "ninja")
"""Beside the sdist's own build requirements: a pip that knows ``-C`` (Debian 11's is 20.3), and the CMake and
ninja that scikit-build-core asks for when the root has none (Debian 11's CMake 3.18 is too old)."""
ROUNDS = 4


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
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(suite.glibc[1], 16, -1)] + ["manylinux2014_x86_64"]
    env = target_environment(suite.python, "x86_64")
    supported = supported_tags(suite.python, platforms)
    log.info(f"fetching the build requirements for the {suite.name} root (Python {suite.python}): "
             f"{', '.join(wanted)} ({mirror.name} mirror)")
    folder.mkdir(parents=True, exist_ok=True)
    with fileio.locked(folder):
        for _ in range(ROUNDS):
            pipfetch.download_for(wanted, folder, mirror, python_version=suite.python, platforms=platforms,
                                  tip="or build on this machine as it is: --build-env host")
            # pip judged the markers by this Python, not the root's: walk them again as the root's Python would
            missing = unmet_requirements(folder, wanted, (), env, supported)
            if not missing:
                break
            log.info(f"Python {suite.python} also needs {', '.join(missing)}: fetching")
            wanted = missing
        else:
            raise DownloadError(f"the build requirements for Python {suite.python} did not settle: still missing "
                                f"{', '.join(missing)}", "try another --mirror, or --build-env host")
    files = [{"file": f.name, "sha256": fileio.sha256_of(f)} for f in sorted(folder.glob("*.whl"))]
    return folder, files
