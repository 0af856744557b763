"""Whether this machine has an NVIDIA GPU and its driver: what the ``gpu`` marker (tests/conftest.py) asks."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path


@cache
def host_gpu() -> tuple[str, ...]:
    """The host's NVIDIA device nodes when a GPU and its driver libraries (libcuda.so.1, libnvidia-ml.so.1) are
    here, else ()."""
    devices = tuple(sorted(str(p) for p in Path("/dev").glob("nvidia*") if p.is_char_device()))
    if not devices:
        return ()
    for ldconfig in ("ldconfig", "/sbin/ldconfig"):
        try:
            libs = subprocess.run([ldconfig, "-p"], capture_output=True, text=True).stdout
        except OSError:
            continue
        return devices if "libcuda.so.1" in libs and "libnvidia-ml.so.1" in libs else ()
    return ()
