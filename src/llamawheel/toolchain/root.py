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
from llamawheel.mirror import provenance
from llamawheel.mirror.provenance import Fetched
from llamawheel.toolchain.assemble import intact, record_files, tree_size

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
    fetched: tuple[dict[str, Any], ...] = ()
    """Each file downloaded to make it: file, URL, sha256 (`llamawheel.mirror.provenance`)."""

    @property
    def nvcc(self) -> Path:
        return self.path / "bin" / "nvcc"

    def cmake_args(self) -> list[str]:
        return [f"-DCMAKE_CUDA_COMPILER={self.nvcc}", f"-DCUDAToolkit_ROOT={self.path}"]

    def env(self) -> dict[str, str]:
        return {"CUDA_HOME": str(self.path), "CUDA_PATH": str(self.path), "CUDACXX": str(self.nvcc)}

    def manifest_fields(self) -> dict[str, Any]:
        return {"cuda": {"provider": self.provider, "origin": self.origin, "nvcc": self.nvcc_version,
                         "toolchain_download_bytes": self.download_bytes},
                "fetched": {"toolchain": list(self.fetched)}}

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["fetched"] = list(self.fetched)
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
            fetched=tuple(data.get("fetched", ())),
        )


def compilers(rel: str) -> bool:
    """The files of a CUDA root hashed again before each use (with their exec bit): nvcc, ptxas, cicc, fatbinary,
    nvlink, cudafe++ (about 180 MB); every other file is checked by its size and time."""
    return rel.startswith(("bin/", "nvvm/bin/"))


def cached_root(root: Path, pins: str) -> CudaRoot | None:
    """The finished root at ``root`` when it was made from the pins ``pins`` (and records its downloads: a root
    from before they were recorded is made again) and is still as it was made (`assemble.intact`), else None."""
    try:
        data = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if data.get("pins") != pins or "fetched" not in data:
        return None
    if not intact(root, f"the CUDA {data.get('version', '')} toolchain", compilers):
        return None
    return CudaRoot.from_marker(root)


def seal(tmp: Path, final: Path, version: str, provider: str, origin: str, nvcc_version: str,
         fetched: list[Fetched], started: float, extra: dict[str, object],
         earlier: tuple[dict[str, Any], ...] = ()) -> CudaRoot:
    """Describe the finished root in ``tmp`` (which becomes ``final``), made of the ``fetched`` files (and the
    ``earlier`` ones of a root it was made from), and write its marker last: a root without a marker is never
    trusted. The list of its files is written just before."""
    root = CudaRoot(path=final, version=version, provider=provider, origin=origin, nvcc_version=nvcc_version,
                    download_bytes=provenance.total_size(fetched), size_bytes=tree_size(tmp),
                    fetched=(*earlier, *provenance.to_json(fetched)))
    marker = root.to_json() | extra | {"seconds": round(time.monotonic() - started, 1)}
    record_files(tmp, compilers)
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return root


def announce(root: CudaRoot, started: float) -> None:
    log.info(
        f"CUDA {root.version} ready at {root.path}: downloaded {log.human_size(root.download_bytes)}, "
        f"{log.human_size(root.size_bytes)} unpacked, in {log.human_time(time.monotonic() - started)}"
    )
