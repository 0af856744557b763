"""Small synthetic wheels for the index tests: real wheel archives (written by `wheelfile.write_wheel`)
whose Requires-Dist names only small packages, so no test downloads a CUDA wheel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llamawheel.wheel.wheelfile import Entry, write_wheel

LLAMA_REQUIRES = ("typing-extensions>=4.5.0", "diskcache>=5.6.1", 'PyYAML>=5.1 ; extra == "server"')


def make_wheel(
    folder: Path,
    *,
    name: str = "llama_cpp_python",
    version: str = "0.3.36+cpu",
    platform: str = "manylinux_2_17_x86_64",
    requires: Sequence[str] = LLAMA_REQUIRES,
    extras: Sequence[str] = ("server",),
    requires_python: str | None = ">=3.8",
    package: str = "llama_cpp",
    payload: bytes = b"",
) -> Path:
    """Write ``<name>-<version>-py3-none-<platform>.whl`` into ``folder`` and return its path."""
    dist_info = f"{name}-{version}.dist-info"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Provides-Extra: {e}" for e in extras]
    lines += [f"Requires-Dist: {r}" for r in requires]
    wheel_file = f"Wheel-Version: 1.0\nGenerator: llamawheel-tests\nRoot-Is-Purelib: false\nTag: py3-none-{platform}\n"
    entries = [
        Entry(f"{package}/__init__.py", f"__version__ = {version.split('+')[0]!r}\n".encode() + payload),
        Entry(f"{dist_info}/METADATA", ("\n".join(lines) + "\n\n").encode()),
        Entry(f"{dist_info}/WHEEL", wheel_file.encode()),
    ]
    path = folder / f"{name}-{version}-py3-none-{platform}.whl"
    write_wheel(entries, path)
    return path
