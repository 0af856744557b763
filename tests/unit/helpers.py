"""Plain helpers shared by the unit tests (fixtures live in conftest.py)."""

from __future__ import annotations

import glob
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES_DIR = ROOT / "recipes"
MIRRORS_DIR = ROOT / "mirrors"

_LIBZ_PATTERNS = (
    "/usr/lib/x86_64-linux-gnu/libz.so.1*",
    "/lib/x86_64-linux-gnu/libz.so.1*",
    "/usr/lib64/libz.so.1*",
    "/lib64/libz.so.1*",
    "/usr/lib/libz.so.1*",
)

METADATA = "Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n\n"
WHEEL = "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: py3-none-linux_x86_64\n"
RAW_WHEEL_NAME = "pkg-1.0-py3-none-linux_x86_64.whl"


def find_system_libz() -> Path | None:
    """The real file behind the system's libz.so.1 (x86-64), or None."""
    for pattern in _LIBZ_PATTERNS:
        for candidate in sorted(glob.glob(pattern)):
            path = Path(candidate).resolve()
            if path.is_file() and path.read_bytes()[:4] == b"\x7fELF":
                return path
    return None


def patched(patchelf: str, data: bytes, args: list[str], tmp_path: Path) -> bytes:
    """Return ``data`` after running ``patchelf ARGS`` on a copy of it."""
    path = tmp_path / "patch-me.so"
    path.write_bytes(data)
    subprocess.run([patchelf, *args, str(path)], check=True, capture_output=True)
    out = path.read_bytes()
    path.unlink()
    return out
