"""llama.cpp's own server (``llama-server``, from the ``llamawheel_server`` wheel) behind the image's front: it runs
on loopback with a key of its own, and `Upstream` (an ASGI app, standard library only) passes each request on to it
and its answer back, streamed as it comes.

What the front adds stays in front (`serve`'s Guard, Admission and StreamErrors); here:

- a client that goes away stops its answer: the connection to llama-server is closed at once, and llama-server
  frees the slot at its next decoding step (a streamed answer and a plain one alike);
- llama-server's "context exceeded" error becomes OpenAI's ``context_length_exceeded`` (what the UI shows);
- ``/metrics`` is llama-server's Prometheus text plus the front's own gauges (`Gauges`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"server", b"date",
              b"content-length", b"access-control-allow-origin", b"access-control-allow-credentials",
              b"access-control-allow-methods", b"access-control-allow-headers", b"vary"}
PASSED_HEADERS = {b"content-type", b"accept"}
"""Request headers passed on (the key is the front's business; llama-server gets its own)."""
MAX_HEADER_BYTES = 64 * 1024


@dataclass
class Gauges:
    """The front's own counts, for ``/metrics``."""

    slots: int
    max_queue: int
    in_flight: int = 0
    """Completions running or waiting now."""
    refused: int = 0
    """Completions refused with 503 since the start."""
    disconnected: int = 0
    """Answers stopped because their client went away."""

    def prometheus(self) -> str:
        running = min(self.in_flight, self.slots)
        rows = [
            ("slots", "gauge", "Parallel slots (PARALLEL): answers written at the same time.", self.slots),
            ("requests_in_flight", "gauge", "Completions being answered or waiting for a slot.", self.in_flight),
            ("requests_waiting", "gauge", "Completions waiting for a free slot (queue depth).",
             self.in_flight - running),
            ("queue_limit", "gauge", "Completions that may wait (MAX_QUEUE); past it 503.", self.max_queue),
            ("requests_refused_total", "counter", "Completions refused with 503 (queue full).", self.refused),
            ("requests_disconnected_total", "counter", "Answers stopped because the client went away.",
             self.disconnected),
        ]
        out = []
        for name, kind, text, value in rows:
            metric = f"llamawheel_{name}"
            out += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}", f"{metric} {value}"]
        return "\n".join(out) + "\n"


class UpstreamError(Exception):
    """llama-server did not answer as HTTP should."""


@dataclass
class Upstream:
    """The ASGI app that passes requests to llama-server at ``host:port`` (with ``key``)."""

    host: str
    port: int
    key: str
    gauges: Gauges
    log: Callable[[str], None] = field(default=lambda line: print(f"llamawheel: {line}", file=sys.stderr, flush=True))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": f"{kind}.complete"})
                if kind == "lifespan.shutdown":
                    return
        if scope.get("type") != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        disconnected = asyncio.ensure_future(_until_disconnect(receive))
        answer = asyncio.ensure_future(self._exchange(scope, body, send))
        try:
            done, _ = await asyncio.wait({disconnected, answer}, return_when=asyncio.FIRST_COMPLETED)
            if answer in done:
                answer.result()
                return
            self.gauges.disconnected += 1
            self.log(f"{scope.get('method')} {scope.get('path')}: the client went away; its answer is stopped")
        finally:
            for task in (disconnected, answer):
                task.cancel()
            for task in (disconnected, answer):
                with contextlib.suppress(BaseException):
                    await task

    async def _exchange(self, scope: Scope, body: bytes, send: Send) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            await self._request(writer, scope, body)
            status, headers = await _read_head(reader)
            if scope.get("path") == "/metrics" and status == 200:
                text = (await _read_body(reader, headers)).decode("utf-8", "replace")
                await _send_whole(send, 200, text.rstrip("\n").encode() + b"\n" + self.gauges.prometheus().encode(),
                                  b"text/plain; version=0.0.4; charset=utf-8")
                return
            if status >= 400:
                data = await _read_body(reader, headers)
                await _send_whole(send, status, context_exceeded(data) or data,
                                  headers.get(b"content-type", b"application/json"))
                return
            await send({"type": "http.response.start", "status": status,
                        "headers": [(k, v) for k, v in headers.items() if k not in HOP_BY_HOP]})
            async for chunk in _body_chunks(reader, headers):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            writer.transport.abort()  # closed at once: llama-server stops the answer at its next step

    async def _request(self, writer: asyncio.StreamWriter, scope: Scope, body: bytes) -> None:
        path = scope.get("raw_path") or scope.get("path", "/").encode()
        if scope.get("query_string"):
            path += b"?" + scope["query_string"]
        lines = [f"{scope.get('method', 'GET')} ".encode() + path + b" HTTP/1.1",
                 f"Host: {self.host}:{self.port}".encode(), b"Connection: close",
                 f"Authorization: Bearer {self.key}".encode(), f"Content-Length: {len(body)}".encode()]
        lines += [k + b": " + v for k, v in scope.get("headers", []) if k.lower() in PASSED_HEADERS]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise UpstreamError(f"llama-server closed the connection without an answer ({exc})") from None
    if len(head) > MAX_HEADER_BYTES:
        raise UpstreamError("llama-server sent an oversized header")
    status_line, *rest = head.rstrip(b"\r\n").split(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise UpstreamError(f"llama-server answered {status_line[:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in rest:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _body_chunks(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> Any:
    """The response body as it arrives (chunked, by length, or up to the end)."""
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise UpstreamError("llama-server ended a chunked answer early")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            chunk = await reader.readexactly(size)
            await reader.readexactly(2)
            yield chunk
    elif b"content-length" in headers:
        left = int(headers[b"content-length"])
        while left > 0:
            chunk = await reader.read(min(left, 65536))
            if not chunk:
                raise UpstreamError("llama-server ended an answer early")
            left -= len(chunk)
            yield chunk
    else:
        while chunk := await reader.read(65536):
            yield chunk


async def _read_body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> bytes:
    return b"".join([c async for c in _body_chunks(reader, headers)])


async def _send_whole(send: Send, status: int, data: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def context_exceeded(data: bytes) -> bytes | None:
    """llama-server's error for a prompt longer than a slot's context, as OpenAI words it (None: another error)."""
    try:
        error = json.loads(data)["error"]
        if error.get("type") != "exceed_context_size_error":
            return None
        prompt, window = int(error["n_prompt_tokens"]), int(error["n_ctx"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    message = (f"This model's maximum context length is {window} tokens. However, your messages resulted in"
               f" {prompt} tokens. Please reduce the length of the messages.")
    return json.dumps(openai_error(message, "invalid_request_error", "context_length_exceeded", "messages")).encode()


def openai_error(message: str, kind: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, which the UI shows (``error.message``) as a toast."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
