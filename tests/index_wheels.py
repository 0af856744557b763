"""Small synthetic wheels for the index tests: real wheel archives (written by `wheelfile.write_wheel`)
whose Requires-Dist names only small packages, so no test downloads a CUDA wheel."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


@contextmanager
def index_server(published: Path, log: Path) -> Iterator[str]:
    """The real ``llamawheel index serve`` of ``published`` on a free loopback port (port 0: it prints the one it
    got), its log in ``log``; yields its base URL (``http://127.0.0.1:PORT``)."""
    with log.open("w") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llamawheel", "index", "serve", "--index", str(published), "--host", "127.0.0.1",
             "--port", "0"],
            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=log_fh, text=True,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith("serving "), first + log.read_text()
            url = first.split(" at ", 1)[1].split("/ ", 1)[0]
            assert url.startswith("http://127.0.0.1:")
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)
