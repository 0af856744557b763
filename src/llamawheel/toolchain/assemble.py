"""Turning a folder of CUDA files into a root that nvcc and FindCUDAToolkit accept."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamawheel.core import log, proc
from llamawheel.core.errors import ToolchainError
from llamawheel.core.fileio import sha256_of

# file in the root -> what provides it (for the error message)
REQUIRED = {
    "bin/nvcc": "the CUDA compiler driver (nvidia-cuda-nvcc)",
    "bin/ptxas": "the PTX assembler (nvidia-cuda-nvcc)",
    "nvvm/bin/cicc": "the CUDA front end (nvidia-nvvm)",
    "include/cuda_runtime.h": "the CUDA runtime headers (nvidia-cuda-runtime)",
    "include/crt/host_config.h": "the CUDA C runtime headers (nvidia-cuda-crt)",
    "include/cublas_v2.h": "the cuBLAS headers (nvidia-cublas)",
    "lib/libcudart.so": "the CUDA runtime library (nvidia-cuda-runtime)",
    "lib/libcudart_static.a": "the static CUDA runtime (nvidia-cuda-runtime)",
    "lib/libcublas.so": "the cuBLAS library (nvidia-cublas)",
    "lib/libcublasLt.so": "the cuBLASLt library (nvidia-cublas)",
}


def link_unversioned(lib: Path) -> None:
    """``libcudart.so.13`` -> add ``libcudart.so`` (the name the linker asks for)."""
    for f in sorted(lib.glob("lib*.so.*")):
        base = f.name.split(".so.")[0] + ".so"
        target = lib / base
        if not target.exists() and not target.is_symlink():
            target.symlink_to(f.name)


def lay_out(root: Path) -> None:
    """Add the links the pip layout lacks: ``lib64``, ``targets/x86_64-linux``, unversioned ``.so``."""
    lib = root / "lib"
    lib.mkdir(exist_ok=True)
    link_unversioned(lib)
    if not (root / "lib64").exists():
        (root / "lib64").symlink_to("lib")
    targets = root / "targets" / "x86_64-linux"
    targets.mkdir(parents=True, exist_ok=True)
    for name in ("include", "lib"):
        if not (targets / name).exists():
            (targets / name).symlink_to(Path("..", "..", name))


def check_complete(root: Path, version: str) -> str:
    """Raise unless every file a build needs is there and nvcc reports ``version``.

    Returns nvcc's release line.
    """
    for rel, what in REQUIRED.items():
        if not (root / rel).exists():
            raise ToolchainError(f"CUDA root {root} lacks {rel}: {what}")
    out = proc.capture([str(root / "bin" / "nvcc"), "--version"], error=ToolchainError,
                       what=f"{root}/bin/nvcc does not run", timeout=60)
    match = re.search(r"release (\d+\.\d+), (V[\d.]+)", out)
    if not match:
        raise ToolchainError(f"{root}/bin/nvcc --version printed no release line:\n{out}")
    if match.group(1) != version:
        raise ToolchainError(f"{root}/bin/nvcc is CUDA {match.group(1)}, not the requested {version}")
    return f"{match.group(1)} ({match.group(2)})"


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            if not p.is_symlink():
                total += p.stat().st_size
    return total


# ---------------------------------------------------------------------- what a finished tree holds

FILES = "llamawheel-files.json"
"""Beside a finished toolchain, build root or compile-cache tool: each file's size, time and sha256, and each link's
target, as they were when it was made (`record_files`), checked before every use (`check_files`)."""
_NOT_LISTED = frozenset({FILES, "llamawheel-toolchain.json", "llamawheel-root.json", "llamawheel-tool.json"})


def _entries(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file (``("file", size, mtime in seconds)``) and link (``("link:" + target, 0, 0)``) under ``root``,
    by path relative to it; folders a user may not read are skipped alike when recording and checking."""
    found: dict[str, tuple[str, int, int]] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except PermissionError:
            continue
        for e in entries:
            rel = os.path.relpath(e.path, root)
            if e.is_symlink():
                found[rel] = ("link:" + os.readlink(e.path), 0, 0)
            elif e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
            elif e.is_file(follow_symlinks=False) and rel not in _NOT_LISTED:
                st = e.stat(follow_symlinks=False)
                found[rel] = ("file", st.st_size, int(st.st_mtime))
    return found


def record_files(root: Path, hashed: Callable[[str], bool]) -> None:
    """Write `FILES` into the finished tree ``root`` (before its marker): every file with its size, time and
    sha256, every link with its target, and which executables (those ``hashed`` says yes to, by path relative to
    ``root``) are hashed again at each use: the compilers, what runs every compile."""
    files: dict[str, Any] = {}
    links: dict[str, str] = {}
    for rel, (kind, size, mtime) in sorted(_entries(root).items()):
        if kind == "file":
            files[rel] = {"size": size, "mtime": mtime, "sha256": sha256_of(root / rel)}
        else:
            links[rel] = kind.removeprefix("link:")
    always = sorted(rel for rel in files if hashed(rel) and (root / rel).stat().st_mode & 0o111)
    (root / FILES).write_text(json.dumps({"files": files, "links": links, "rehash": always}, indent=1) + "\n")


def check_files(root: Path) -> str | None:
    """What differs in ``root`` from its `FILES` (None: nothing; the text names the file). Cheap: each file's size
    and time are compared (the tree is walked, so an added file is seen too); a file whose time changed with the
    same size, and the files recorded as hashed at each use (the compilers), are hashed again."""
    data = json.loads((root / FILES).read_text())
    files: dict[str, dict[str, Any]] = data["files"]
    links: dict[str, str] = data["links"]
    rehash = set(data.get("rehash", ()))
    now = _entries(root)
    for rel in sorted(set(files) | set(links)):
        if rel not in now:
            return f"{rel} is missing"
    for rel, (kind, size, mtime) in sorted(now.items()):
        if rel in links:
            if kind != "link:" + links[rel]:
                return f"{rel} no longer links to {links[rel]}"
            continue
        want = files.get(rel)
        if want is None:
            return f"{rel} was added"
        if kind != "file":
            return f"{rel} was replaced by a link"
        if size != want["size"]:
            return f"{rel} changed size ({want['size']} -> {size} bytes)"
        if (rel in rehash or mtime != want["mtime"]) and sha256_of(root / rel) != want["sha256"]:
            return f"{rel} was modified (its sha256 is not the one recorded)"
    return None


def intact(root: Path, what: str, hashed: Callable[[str], bool]) -> bool:
    """Whether ``root`` (``what`` it is, in words) is as it was made, checked before each use (`check_files`); a
    damaged one is named with the file that differs, to be made again. A tree made before llamawheel recorded its
    files has them recorded now, and is checked from then on."""
    if not (root / FILES).is_file():
        log.info(f"recording the files of {what} {root} (made by an older llamawheel): each later use checks them")
        record_files(root, hashed)
        return True
    problem = check_files(root)
    if problem is not None:
        log.warn(f"{what} {root} is damaged: {problem}; it is not used, but made again")
        return False
    return True
