"""The server's front door (`serve.security`, `serve.Guard`): who may start it open, and what a request must be
before it costs anything. Fake ASGI apps, no uvicorn: the same attacks against the real image on loopback are in
tests/integration/test_image.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from llamawheel.runtime import serve

Message = MutableMapping[str, Any]
KEY = "sk-" + "k" * 40


def settings(**changes: Any) -> serve.Security:
    return serve.Security(**{"api_key": KEY, "max_body": 4096, "body_timeout": 0.5, **changes})


# --- security ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "192.168.1.5", "example.org"])
def test_no_key_on_an_open_address_refuses_to_start(host: str) -> None:
    with pytest.raises(serve.ConfigError, match="API_KEY is not set: set API_KEY") as caught:
        serve.security({"HOST": host} if host else {})
    assert "ALLOW_NO_API_KEY=true" in str(caught.value) and "HOST=127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "localhost", "::1", "[::1]"])
def test_no_key_on_loopback_is_allowed(host: str) -> None:
    assert serve.security({"HOST": host}).api_key == ""


def test_an_open_server_without_a_key_must_be_asked_for_and_is_logged() -> None:
    got = serve.security({"HOST": "0.0.0.0", "ALLOW_NO_API_KEY": "true"})
    assert got.api_key == "" and "anyone who reaches this port can use it" in got.notes[0]


def test_the_old_default_key_is_refused() -> None:
    with pytest.raises(serve.ConfigError, match="gave everyone"):
        serve.security({"API_KEY": "sk-llamawheel"})


def test_a_short_key_gets_a_note_and_the_limits_come_from_the_environment() -> None:
    got = serve.security({"API_KEY": "short", "MAX_BODY_BYTES": "2048", "BODY_TIMEOUT": "5",
                          "CORS_ORIGINS": "https://chat.example.org/, http://a.test:8080"})
    assert "guessable" in got.notes[0]
    assert (got.max_body, got.body_timeout, got.cors_origins) == (2048, 5.0,
                                                                    ("https://chat.example.org", "http://a.test:8080"))


@pytest.mark.parametrize(("name", "value"), [("CORS_ORIGINS", "*"), ("CORS_ORIGINS", "chat.example.org"),
                                             ("MAX_BODY_BYTES", "lots"), ("MAX_BODY_BYTES", "10"),
                                             ("BODY_TIMEOUT", "0")])
def test_bad_limits_or_origins_are_refused(name: str, value: str) -> None:
    with pytest.raises(serve.ConfigError, match=name):
        serve.security({"API_KEY": KEY, name: value})


# --- Guard ---------------------------------------------------------------------------------------------------

class Peer:
    """One client: the request (headers, body chunks, or a body that never comes) and what it got back."""

    def __init__(self, *chunks: bytes, stall: bool = False) -> None:
        self.incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1 or stall}
                         for i, c in enumerate(chunks)]
        self.stall = stall
        self.sent: list[Message] = []
        self.reads = 0

    async def receive(self) -> Message:
        self.reads += 1
        if self.incoming:
            return self.incoming.pop(0)
        if self.stall:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


class App:
    """Records what reached it; answers 200 with llama_cpp.server's open CORS headers."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"access-control-allow-origin", b"*"),
            (b"access-control-allow-credentials", b"true")]})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})


def request(guard: serve.Guard, peer: Peer, method: str = "POST", path: str = "/v1/chat/completions",
            **headers: str) -> Peer:
    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(guard(scope, peer.receive, peer.send))
    return peer


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_right_key_reaches_the_app_with_the_whole_body() -> None:
    app = App()
    peer = request(serve.Guard(app, settings()), Peer(b'{"a"', b": 1}"), **bearer())
    assert peer.status == 200 and app.bodies == [b'{"a": 1}']


@pytest.mark.parametrize("authorization", [None, f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Basic {KEY}", "Bearer",
                                           KEY])
def test_a_wrong_or_missing_key_is_refused_before_the_body_is_read(authorization: str | None) -> None:
    app = App()
    peer = Peer(stall=True)  # a client that never sends its body: a 401 must not wait for it
    request(serve.Guard(app, settings()), peer, **({"Authorization": authorization} if authorization else {}))
    assert peer.status == 401 and peer.json()["error"]["code"] == "invalid_api_key"
    assert peer.headers[b"www-authenticate"] == b"Bearer"
    assert app.bodies == [] and peer.reads == 0


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/v1/models"])
def test_every_path_needs_the_key(path: str) -> None:
    assert request(serve.Guard(App(), settings()), Peer(), "GET", path).status == 401
    assert request(serve.Guard(App(), settings()), Peer(), "GET", path, **bearer()).status == 200


def test_a_body_over_the_limit_is_413_at_once_when_its_length_says_so() -> None:
    peer = request(serve.Guard(App(), settings()), Peer(stall=True), Content_Length=str(100 * 2**20), **bearer())
    assert peer.status == 413 and peer.reads == 0 and "MAX_BODY_BYTES" in peer.json()["error"]["message"]


def test_a_chunked_body_over_the_limit_is_413_as_soon_as_it_passes_it() -> None:
    app = App()
    peer = request(serve.Guard(app, settings()), Peer(b"x" * 3000, b"x" * 3000, stall=True), **bearer())
    assert peer.status == 413 and peer.reads == 2 and app.bodies == []


def test_a_body_that_never_finishes_is_408_after_the_timeout() -> None:
    app = App()
    peer = request(serve.Guard(app, settings(body_timeout=0.2)), Peer(b"{", stall=True), **bearer())
    assert peer.status == 408 and "BODY_TIMEOUT" in peer.json()["error"]["message"] and app.bodies == []


def test_a_preflight_from_another_origin_is_refused_and_no_cors_header_is_ever_sent() -> None:
    peer = request(serve.Guard(App(), settings()), Peer(), "OPTIONS", Origin="https://evil.example",
                   Access_Control_Request_Method="POST")
    assert peer.status == 403 and not any(k.startswith(b"access-control") for k in peer.headers)
    peer = request(serve.Guard(App(), settings()), Peer(b"{}"), Origin="https://evil.example", **bearer())
    assert peer.status == 200  # a client that has the key; but the app's "allow every origin" is gone
    assert not any(k.startswith(b"access-control") for k in peer.headers)


def test_a_listed_origin_gets_its_preflight_and_its_header() -> None:
    guard = serve.Guard(App(), settings(cors_origins=("https://chat.example.org",)))
    peer = request(guard, Peer(), "OPTIONS", Origin="https://chat.example.org", Access_Control_Request_Method="POST")
    assert peer.status == 204 and peer.headers[b"access-control-allow-origin"] == b"https://chat.example.org"
    assert b"access-control-allow-credentials" not in peer.headers
    peer = request(guard, Peer(b"{}"), Origin="https://chat.example.org", **bearer())
    assert peer.headers[b"access-control-allow-origin"] == b"https://chat.example.org"


def test_without_a_key_a_page_of_another_origin_cannot_post() -> None:
    app = App()
    peer = request(serve.Guard(app, settings(api_key="")), Peer(b"{}"), Origin="https://evil.example",
                   Content_Type="text/plain")
    assert peer.status == 403 and app.bodies == []
    peer = request(serve.Guard(app, settings(api_key="")), Peer(b"{}"), Host="127.0.0.1:8000",
                   Origin="http://127.0.0.1:8000")
    assert peer.status == 200  # the server's own pages (/docs)


def test_lifespan_passes_and_websockets_are_closed() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    peer = Peer()
    asyncio.run(serve.Guard(app, settings())({"type": "lifespan"}, peer.receive, peer.send))
    asyncio.run(serve.Guard(app, settings())({"type": "websocket", "headers": []}, peer.receive, peer.send))
    assert seen == ["lifespan"] and peer.sent == [{"type": "websocket.close", "code": 1008}]
