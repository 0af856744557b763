"""The ``pypi`` provider: a CUDA root from NVIDIA's wheels on PyPI (CUDA 13 only).

The pinned wheels are downloaded through pip (so the mirror profile and this
machine's pip configuration apply, and pip checks every sha256), unpacked without
pip's help, and laid out as a plain CUDA root (see `assemble.lay_out`).
"""

from __future__ import annotations

import hashlib
import shutil
import time
import zipfile
from pathlib import Path

from llamawheel.core import fileio, log, paths
from llamawheel.core.errors import ToolchainError
from llamawheel.mirror import pipfetch
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.recipe.model import CudaMinor
from llamawheel.toolchain.assemble import check_complete, lay_out
from llamawheel.toolchain.root import CudaRoot, announce, cached_root, seal


def pins_key(minor: CudaMinor) -> str:
    text = "\n".join(p.requirement_line() for p in minor.packages) + f"\nroot={minor.root}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def extract_prefix(wheel: Path, prefix: str, dest: Path) -> int:
    """Unpack the members of ``wheel`` under ``prefix/`` into ``dest``, keeping exec bits."""
    count = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(prefix + "/"):
                continue
            rel = info.filename[len(prefix) + 1 :]
            if rel.startswith(".metadata/") or ".." in Path(rel).parts:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            target.chmod(mode if mode else 0o644)
            count += 1
    return count


class PypiProvider:
    name = "pypi"

    def root_dir(self, minor: CudaMinor) -> Path:
        return paths.toolchains_dir() / f"cuda-{minor.version}-pypi"

    def cached(self, minor: CudaMinor) -> CudaRoot | None:
        return cached_root(self.root_dir(minor), pins_key(minor))

    def provision(self, minor: CudaMinor, mirror: MirrorProfile) -> CudaRoot:
        if not minor.root:
            raise ToolchainError(f"recipe entry for CUDA {minor.version} has no 'root' for the pypi provider")
        root_dir = self.root_dir(minor)
        with fileio.locked(root_dir):
            found = self.cached(minor)
            if found:
                log.info(f"CUDA {minor.version} toolchain: reusing {found.path} ({found.origin})")
                return found
            log.info(f"provisioning CUDA {minor.version} from NVIDIA's PyPI wheels ({mirror.name} mirror)")
            start = time.monotonic()
            with fileio.new_dir(root_dir) as tmp:
                downloads = tmp / ".downloads"
                fetched = pipfetch.download(
                    [p.requirement_line() for p in minor.packages], downloads, mirror, binary=True
                )
                for wheel in (f.path for f in fetched):
                    if extract_prefix(wheel, minor.root, tmp) == 0:
                        raise ToolchainError(f"{wheel.name} holds nothing under {minor.root}/")
                shutil.rmtree(downloads)
                lay_out(tmp)
                nvcc_version = check_complete(tmp, minor.version)
                origin = f"NVIDIA PyPI wheels ({mirror.name} mirror)"
                root = seal(tmp, root_dir, minor.version, self.name, origin, nvcc_version, fetched, start, {
                    "pins": pins_key(minor),
                    "packages": [f"{p.name}=={p.version}" for p in minor.packages],
                })
            announce(root, start)
            return root
