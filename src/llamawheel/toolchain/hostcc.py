"""The host C++ compiler nvcc will use: each CUDA version accepts GCC up to some major.

Chosen before CMake runs, so an unsupported compiler is an error that says what to
install, not a failure deep in CMake's CUDA detection.
"""

from __future__ import annotations

import re
import shutil

from llamawheel.core import log, proc
from llamawheel.core.errors import ToolchainError
from llamawheel.recipe.model import CudaMinor


def gcc_major(compiler: str) -> int | None:
    """The major version ``compiler -dumpversion`` prints; None when it prints none or does not run."""
    done = proc.probe([compiler, "-dumpversion"], timeout=30)
    match = re.match(r"(\d+)", done.stdout.strip()) if done is not None else None
    return int(match.group(1)) if match else None


def choose(minor: CudaMinor, default: str = "g++", root_gcc: int | None = None) -> str | None:
    """``None`` when the default ``g++`` will do, else the path of a suitable ``g++-N``.

    ``root_gcc``: the build happens in a root whose ``g++`` is that major; it must be one nvcc accepts."""
    if root_gcc is not None:
        if root_gcc > minor.max_gcc:
            raise ToolchainError(
                f"CUDA {minor.version}'s nvcc accepts GCC {minor.max_gcc} at most, but the build root's g++ is "
                f"{root_gcc}", "choose an older root with --build-env (llamawheel toolchains lists them)")
        return None
    found = shutil.which(default)
    major = gcc_major(found) if found else None
    if major is not None and major <= minor.max_gcc:
        return None
    for n in range(minor.max_gcc, 6, -1):
        candidate = shutil.which(f"g++-{n}")
        if candidate and gcc_major(candidate) == n:
            log.info(f"CUDA {minor.version} accepts GCC {minor.max_gcc} at most and g++ is {major}: using {candidate}")
            return candidate
    raise ToolchainError(
        f"CUDA {minor.version}'s nvcc accepts GCC {minor.max_gcc} at most, but this machine's g++ is "
        f"{major if major is not None else 'missing'} and no g++-{minor.max_gcc} or older is installed",
        f"install one: apt-get install g++-{minor.max_gcc}",
    )
