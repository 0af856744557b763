"""The unit tests' network guard (conftest.py): loopback and AF_UNIX work, anything else is refused by name."""

from __future__ import annotations

import http.server
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import NetworkGuard, NetworkInUnitTest


@pytest.fixture
def loopback_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_on_loopback_is_reached(loopback_server: int) -> None:
    for host in ("127.0.0.1", "localhost"):
        with urllib.request.urlopen(f"http://{host}:{loopback_server}/", timeout=10) as response:
            assert response.status == 200


def test_an_af_unix_socket_connects(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen()
        client.connect(path)


@pytest.mark.parametrize("method", ["connect", "connect_ex"])
def test_a_connection_off_this_machine_is_refused_by_address(_no_network: NetworkGuard, method: str) -> None:
    with socket.socket() as sock, pytest.raises(NetworkInUnitTest) as refused:
        getattr(sock, method)(("192.0.2.1", 80))
    assert "a connection to ('192.0.2.1', 80) (AF_INET) was refused" in str(refused.value)
    assert "only loopback (127.0.0.0/8, ::1) and AF_UNIX are allowed" in str(refused.value)
    assert _no_network.refused  # the test would fail at teardown even had the code under test swallowed the error
    _no_network.refused.clear()


def test_a_url_off_this_machine_is_refused_before_any_lookup(_no_network: NetworkGuard) -> None:
    """urllib turns an OSError into URLError; the refusal is no OSError, so it is not mistaken for "unreachable"."""
    with pytest.raises(NetworkInUnitTest, match=r"a DNS lookup of 'pypi\.example' was refused"):
        urllib.request.urlopen("http://pypi.example/simple/", timeout=5)
    assert not issubclass(NetworkInUnitTest, (OSError, urllib.error.URLError))
    _no_network.refused.clear()
