"""A CUDA root for cross-compiling: this machine's toolchain (nvcc, ptxas, cicc and the headers, from any provider)
with another platform's runtime libraries in ``targets/<platform>/lib``, from NVIDIA's wheels for that platform as
the recipe pins them (``[minors."13.0".targets.aarch64]``).

nvcc runs here and compiles device code as it does for x86-64; only the host code is the target's (the platform's
cross g++ as nvcc's host compiler) and the libraries it links against are the target's. The headers are the
toolchain's own (CUDA's headers are the same on every platform). The root is made once next to the toolchain's
(``cuda-13.0-pypi-aarch64``), its files hard links to the toolchain's where the filesystem allows (no second copy of
nvcc on disk), and reused while the toolchain and the pins are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import zipfile
from pathlib import Path

from llamawheel.core import fileio, log, proc
from llamawheel.core.errors import ToolchainError
from llamawheel.mirror import pipfetch
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.recipe.model import CudaMinor
from llamawheel.recipe.platforms import Platform
from llamawheel.toolchain.assemble import link_unversioned
from llamawheel.toolchain.root import MARKER, CudaRoot, announce, cached_root, seal

LIB_FOLDERS = ("/lib/", "/lib64/")


def _pins(host: CudaRoot, minor: CudaMinor, target: Platform) -> str:
    marker = json.loads((host.path / MARKER).read_text())
    lines = ["records: 2", str(marker.get("pins", "")), host.path.name, target.name,
             *(p.requirement_line() for p in minor.targets[target.name].packages)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _extract_libraries(wheel: Path, dest: Path) -> int:
    """The shared and static libraries of one of NVIDIA's wheels (``nvidia/cu13/lib/libcudart.so.13``) into
    ``dest``; returns how many."""
    count = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or not name.startswith("nvidia/") or not any(f in name for f in LIB_FOLDERS):
                continue
            target = dest / Path(name).name
            with zf.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            target.chmod(0o755 if ".so" in target.name else 0o644)
            count += 1
    return count


def _copy_tree(source: Path, dest: Path) -> None:
    """``source``'s files into ``dest``: hard links where the filesystem allows, else copies."""
    linked = proc.probe(["cp", "-al", f"{source}/.", str(dest)])
    if linked is None or not linked.ok:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(source, dest, symlinks=True)


def cross_root(host: CudaRoot, minor: CudaMinor, target: Platform, mirror: MirrorProfile) -> CudaRoot:
    """The CUDA root for building for ``target`` with ``host``'s compilers: made (or reused) next to it."""
    libraries = minor.targets.get(target.name)
    if libraries is None:
        listed = ", ".join(minor.targets) or "none"
        raise ToolchainError(
            f"CUDA {minor.version} has no {target.name} runtime libraries in its recipe (platforms listed: {listed}), "
            f"so nothing for {target.label} can be linked",
            f"build CUDA 13 (13.0 lists NVIDIA's aarch64 wheels), or add [minors.\"{minor.version}\".targets."
            f"{target.name}] with the pinned nvidia-cuda-runtime and nvidia-cublas wheels for {target.name}")
    final = host.path.with_name(f"{host.path.name}-{target.name}")
    pins = _pins(host, minor, target)
    with fileio.locked(final):
        found = cached_root(final, pins)
        if found:
            log.info(f"CUDA {minor.version} for {target.label}: reusing {found.path}")
            return found
        log.info(f"making the CUDA {minor.version} root for {target.label}: {host.path.name}'s compilers with "
                 f"NVIDIA's {target.name} runtime wheels ({mirror.name} mirror)")
        started = time.monotonic()
        with fileio.new_dir(final) as tmp:
            _copy_tree(host.path, tmp)
            for stale in (MARKER, "llamawheel-files.json"):
                (tmp / stale).unlink(missing_ok=True)
            downloads = tmp / ".downloads"
            tags = (f"manylinux_2_28_{target.name}", f"manylinux_2_17_{target.name}", f"manylinux2014_{target.name}")
            fetched = pipfetch.download([p.requirement_line() for p in libraries.packages], downloads, mirror,
                                        binary=True, python_version="3.12", platforms=tags)  # py3-none wheels
            lib = tmp / "targets" / target.cuda_target / "lib"
            shutil.rmtree(lib.parent, ignore_errors=True)
            lib.mkdir(parents=True)
            (lib.parent / "include").symlink_to(Path("..", "..", "include"))  # CUDA's headers are the same there
            for wheel in (f.path for f in fetched):
                if _extract_libraries(wheel, lib) == 0:
                    raise ToolchainError(f"{wheel.name} holds no libraries under nvidia/*/lib/")
            shutil.rmtree(downloads)
            link_unversioned(lib)
            # CMake's FindCUDAToolkit looks for a cross target's files in targets/aarch64-linux
            alias = tmp / "targets" / f"{target.name}-linux"
            if target.cuda_target != alias.name and not alias.exists():
                alias.symlink_to(target.cuda_target)
            origin = f"{host.origin}, with NVIDIA's {target.name} runtime wheels ({mirror.name} mirror)"
            root = seal(tmp, final, host.version, host.provider, origin, host.nvcc_version, fetched, started,
                        {"pins": pins, "platform": target.name, "toolchain": host.path.name}, host.fetched)
        announce(root, started)
        return root

