"""Turning a folder of CUDA files into a root that nvcc and FindCUDAToolkit accept."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from llamawheel.core.errors import ToolchainError

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
    try:
        out = subprocess.run(
            [str(root / "bin" / "nvcc"), "--version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolchainError(f"{root}/bin/nvcc does not run: {exc}") from None
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
