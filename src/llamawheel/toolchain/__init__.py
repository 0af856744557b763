"""CUDA toolchains: a plain CUDA root (``bin/nvcc``, ``include/``, ``lib64/``, ``nvvm/``,
``targets/x86_64-linux/{include,lib}``) that CMake's FindCUDAToolkit accepts.

A *provider* makes one (`root.CudaRoot`) for a recipe's CUDA minor. Each implements `Provider`:
``pypi`` (NVIDIA's wheels), ``deb`` (apt packages) and ``system`` (an installed toolkit). Roots live
under the cache (``paths.toolchains_dir()``), are made in a temporary folder and renamed into place
only when complete, and are reused while the recipe's pins are unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from llamawheel.core.errors import ToolchainError
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.recipe.model import CudaMinor
from llamawheel.toolchain.deb import DebProvider
from llamawheel.toolchain.pypi import PypiProvider
from llamawheel.toolchain.root import MARKER, CudaRoot
from llamawheel.toolchain.system import SystemProvider

__all__ = ["CudaRoot", "Provider", "cached_roots", "provider_for"]


class Provider(Protocol):
    name: str

    def provision(self, minor: CudaMinor, mirror: MirrorProfile) -> CudaRoot:
        """Return a complete CUDA root for ``minor``, making it if needed."""
        ...


def provider_for(minor: CudaMinor, choice: str = "auto") -> Provider:
    """The provider to use.

    ``auto``: a complete installed toolkit of the same minor if there is one, else the
    recipe's provider. ``pypi``, ``deb``, ``system``: that one (pypi and deb only where the
    recipe says how).
    """
    if choice == "auto":
        root, _ = SystemProvider().explain(minor)
        if root is not None:
            return SystemProvider(found=root)
        choice = minor.provider
    if choice == "system":
        return SystemProvider()
    if choice != minor.provider:
        raise ToolchainError(
            f"the recipe provides CUDA {minor.version} through '{minor.provider}', not '{choice}'",
            f"use --toolchain {minor.provider}, system or auto"
            + (" (CUDA 11 and 12 compilers are not on PyPI)" if choice == "pypi" else ""),
        )
    if choice == "pypi":
        return PypiProvider()
    if choice == "deb":
        return DebProvider()
    raise ToolchainError(f"unknown toolchain provider '{choice}'", "choose auto, pypi, deb or system")


def cached_roots(folder: Path) -> list[CudaRoot]:
    """Every complete toolchain under ``folder`` (those with a marker)."""
    if not folder.is_dir():
        return []
    return [CudaRoot.from_marker(d) for d in sorted(folder.iterdir()) if (d / MARKER).is_file()]
