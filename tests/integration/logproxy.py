"""A forwarding HTTP proxy that logs every host it is asked for: ``CONNECT host:443`` (https, the tunnel is
relayed byte for byte, nothing decrypted) and absolute-URI requests (plain http, as apt sends them). Tests send
pip, apt and mmdebstrap through it (``http_proxy``/``https_proxy``) from a network namespace whose only way out
is this proxy, so that nothing can go around it unseen."""

from __future__ import annotations

import http.client
import select
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

HOP_HEADERS = {"proxy-connection", "connection", "keep-alive", "proxy-authorization", "te", "trailers", "upgrade"}


class LoggingProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.hosts: list[str] = []
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def note(self, host: str, request: str) -> None:
        with self.lock:
            self.hosts.append(host)
            self.requests.append(request)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(socketserver.StreamRequestHandler):
    server: LoggingProxy

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(65537).decode("latin-1")
            if not line.strip():
                return
            method, target, _ = [*line.split(" ", 2), "", ""][:3]
            headers = []
            while True:
                header = self.rfile.readline(65537).decode("latin-1")
                if header in ("\r\n", "\n", ""):
                    break
                headers.append(header.rstrip("\r\n"))
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                self.server.note(host, f"CONNECT {target}")
                self._tunnel(host, int(port or 443))
                return
            if not self._forward(method, target, headers):
                return

    def _tunnel(self, host: str, port: int) -> None:
        try:
            upstream = socket.create_connection((host, port), timeout=30)
        except OSError as exc:
            self.wfile.write(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{exc}".encode())
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        client = self.connection
        with upstream:
            while True:
                ready, _, _ = select.select([client, upstream], [], [], 60)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)

    def _forward(self, method: str, target: str, headers: list[str]) -> bool:
        """Relay one plain-http request (absolute URI); returns whether the client may send another."""
        parts = urlsplit(target)
        host = parts.hostname or ""
        self.server.note(host, f"{method} {target}")
        fields = {}
        for header in headers:
            name, _, value = header.partition(":")
            if name.strip().lower() not in HOP_HEADERS:
                fields[name.strip()] = value.strip()
        length = int(fields.get("Content-Length", fields.get("content-length", "0")) or 0)
        body = self.rfile.read(length) if length else None
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn = http.client.HTTPConnection(host, parts.port or 80, timeout=60)
            conn.request(method, path or "/", body=body, headers=fields)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            self.wfile.write(f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: {len(str(exc))}\r\n\r\n{exc}".encode())
            return False
        out = [f"HTTP/1.1 {resp.status} {resp.reason}"]
        out += [f"{k}: {v}" for k, v in resp.getheaders()
                if k.lower() not in HOP_HEADERS and k.lower() not in ("content-length", "transfer-encoding")]
        out += [f"Content-Length: {len(data)}", "Connection: keep-alive"]
        self.wfile.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + data)
        self.wfile.flush()
        conn.close()
        return True


@contextmanager
def running(host: str = "127.0.0.1") -> Iterator[LoggingProxy]:
    proxy = LoggingProxy((host, 0))
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
