"""A CUDA root: a plain folder (``bin/nvcc``, ``include/``, ``lib64/``, ``nvvm/``,
``targets/x86_64-linux/{include,lib}``) that CMake's FindCUDAToolkit accepts, and the marker file
that says a provider finished making it."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llamawheel.core import log
from llamawheel.toolchain.assemble import tree_size

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

    def manifest_fields(self) -> dict[str, Any]:
        return {"cuda": {"provider": self.provider, "origin": self.origin, "nvcc": self.nvcc_version,
                         "toolchain_download_bytes": self.download_bytes}}

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
    root = CudaRoot(path=final, version=version, provider=provider, origin=origin, nvcc_version=nvcc_version,
                    download_bytes=download_bytes, size_bytes=tree_size(tmp))
    marker = root.to_json() | extra | {"seconds": round(time.monotonic() - started, 1)}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return root


def announce(root: CudaRoot, started: float) -> None:
    log.info(
        f"CUDA {root.version} ready at {root.path}: downloaded {log.human_size(root.download_bytes)}, "
        f"{log.human_size(root.size_bytes)} unpacked, in {log.human_time(time.monotonic() - started)}"
    )
