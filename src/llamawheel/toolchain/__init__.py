"""CUDA toolchains: a plain CUDA root (``bin/nvcc``, ``include/``, ``lib64/``, ``nvvm/``,
``targets/x86_64-linux/{include,lib}``) that CMake's FindCUDAToolkit accepts.

A *provider* makes one for a recipe's CUDA minor. Each implements `Provider`:
``pypi`` (NVIDIA's wheels, this module's `pypi`); ``deb`` and ``system`` fit the same
interface. Roots live under the cache (``paths.toolchains_dir()``), are made in a
temporary folder and renamed into place only when complete, and are reused while the
recipe's pins are unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from llamawheel.errors import ToolchainError
from llamawheel.mirrors import MirrorProfile
from llamawheel.recipes import CudaMinor

MARKER = "llamawheel-toolchain.json"


@dataclass(frozen=True)
class CudaRoot:
    path: Path
    version: str
    provider: str
    origin: str
    """Where it came from, in words: "NVIDIA PyPI wheels (default mirror)"."""
    nvcc_version: str
    download_bytes: int
    size_bytes: int

    @property
    def nvcc(self) -> Path:
        return self.path / "bin" / "nvcc"

    def cmake_args(self) -> list[str]:
        return [f"-DCMAKE_CUDA_COMPILER={self.nvcc}", f"-DCUDAToolkit_ROOT={self.path}"]

    def env(self) -> dict[str, str]:
        return {"CUDA_HOME": str(self.path), "CUDA_PATH": str(self.path), "CUDACXX": str(self.nvcc)}

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    @classmethod
    def from_marker(cls, root: Path) -> CudaRoot:
        data = json.loads((root / MARKER).read_text())
        return cls(
            path=root,
            version=data["version"],
            provider=data["provider"],
            origin=data["origin"],
            nvcc_version=data["nvcc_version"],
            download_bytes=int(data["download_bytes"]),
            size_bytes=int(data["size_bytes"]),
        )


def seal(tmp: Path, final: Path, version: str, provider: str, origin: str, nvcc_version: str,
         download_bytes: int, started: float, extra: dict[str, object]) -> CudaRoot:
    """Describe the finished root in ``tmp`` (which becomes ``final``) and write its marker last:
    a root without a marker is never trusted."""
    import json
    import time

    from llamawheel.toolchain.assemble import tree_size

    root = CudaRoot(path=final, version=version, provider=provider, origin=origin, nvcc_version=nvcc_version,
                    download_bytes=download_bytes, size_bytes=tree_size(tmp))
    marker = root.to_json() | extra | {"seconds": round(time.monotonic() - started, 1)}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return root


def announce(root: CudaRoot, started: float) -> None:
    import time

    from llamawheel import log

    log.info(
        f"CUDA {root.version} ready at {root.path}: downloaded {log.human_size(root.download_bytes)}, "
        f"{log.human_size(root.size_bytes)} unpacked, in {log.human_time(time.monotonic() - started)}"
    )


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
    from llamawheel.toolchain.deb import DebProvider
    from llamawheel.toolchain.pypi import PypiProvider
    from llamawheel.toolchain.system import SystemProvider

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
