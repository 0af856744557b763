"""The ``system`` provider: a CUDA toolkit already installed on this machine.

Candidates, in order: ``$CUDA_HOME``, ``$CUDA_PATH``, ``/usr/local/cuda-X.Y``, ``/usr/local/cuda``.
One is used only when its nvcc reports the requested minor and it holds everything a
build needs (cuBLAS included); each rejection is said with its reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llamawheel.core import log
from llamawheel.core.errors import ToolchainError
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.recipe.model import CudaMinor
from llamawheel.toolchain.assemble import check_complete
from llamawheel.toolchain.root import CudaRoot


@dataclass(frozen=True)
class Candidate:
    path: Path
    source: str
    usable: bool
    reason: str
    nvcc: str = ""
    """nvcc's release, for a usable one: ``12.4 (V12.4.131)``."""


def candidates(version: str, search: list[tuple[str, Path]] | None = None) -> list[Candidate]:
    if search is None:
        search = []
        for var in ("CUDA_HOME", "CUDA_PATH"):
            if os.environ.get(var):
                search.append((f"${var}", Path(os.environ[var])))
        search += [("default location", Path(f"/usr/local/cuda-{version}")),
                   ("default location", Path("/usr/local/cuda"))]
    seen: set[Path] = set()
    out = []
    for source, path in search:
        if not path.exists():
            continue
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            nvcc = check_complete(path, version)
            out.append(Candidate(path, source, True, f"CUDA {nvcc}, complete", nvcc))
        except ToolchainError as exc:
            out.append(Candidate(path, source, False, exc.message))
    return out


class SystemProvider:
    name = "system"

    def __init__(self, search: list[tuple[str, Path]] | None = None, found: CudaRoot | None = None) -> None:
        self.search = search
        self.found = found
        """A root already found (and explained) by `provider_for`: provision returns it as it is."""

    def find(self, minor: CudaMinor) -> tuple[CudaRoot | None, list[Candidate]]:
        found = candidates(minor.version, self.search)
        for c in found:
            if c.usable:
                root = CudaRoot(
                    path=c.path, version=minor.version, provider=self.name, origin=f"installed toolkit ({c.source})",
                    nvcc_version=c.nvcc, download_bytes=0, size_bytes=0,
                )
                return root, found
        return None, found

    def explain(self, minor: CudaMinor) -> tuple[CudaRoot | None, list[Candidate]]:
        """`find`, saying for each candidate whether it is used and why."""
        root, found = self.find(minor)
        for c in found:
            log.info(f"system toolkit {c.path} ({c.source}): {'using it' if c.usable else 'not used'}: {c.reason}")
        return root, found

    def provision(self, minor: CudaMinor, mirror: MirrorProfile) -> CudaRoot:
        if self.found is not None:
            return self.found
        root, found = self.explain(minor)
        if root is None:
            raise ToolchainError(
                f"no installed CUDA {minor.version} toolkit is complete"
                + ("" if found else " (none found in $CUDA_HOME, $CUDA_PATH, /usr/local/cuda-X.Y, /usr/local/cuda)"),
                "use --toolchain auto to provision one, or point CUDA_HOME at a complete toolkit",
            )
        return root
