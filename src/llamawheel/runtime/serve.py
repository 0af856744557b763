"""The image's entry point: ``python -m llamawheel_runtime.serve`` starts llama-cpp-python's OpenAI-compatible
server the way the stock llama-gpt UI needs it (see ``llama-gpt-contract.md``).

Environment (every name is also one llama_cpp.server reads; anything else it reads passes through):

- ``MODEL``: the GGUF to serve, absolute or relative to ``MODELS_DIR`` (``/models``). Unset: the one GGUF
  file anywhere under ``/models`` (any extension: llama-gpt names GGUF files ``*.bin``).
- ``MODEL_ALIAS``: the id served on ``/v1/models``; default ``/models/llama-2-7b-chat.bin``, an id the UI
  knows (with an id it does not know, the UI spins forever).
- ``N_CTX``: default 4096, the least the UI needs (it sends up to 4000 tokens of history and asks for 1000).
- ``N_GPU_LAYERS``: ``auto`` (default) fits layers to the free GPU memory (see `gpu_layers`); a number as
  llama.cpp takes it (-1: all).
- ``API_KEY``: when set, every request needs ``Authorization: Bearer <key>``.
- ``HOST``/``PORT``: default 0.0.0.0 and 8000.

A streamed request whose prompt is longer than the context gets the same OpenAI-style 400
``context_length_exceeded`` error a plain request gets (llama_cpp.server 0.3.36 sends an empty 200 stream),
and the server stays up.

Standard library only at import time: llama_cpp and uvicorn are imported in `main`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import gpu_layers

UI_MODEL_IDS = (
    "/models/llama-2-7b-chat.bin",
    "/models/llama-2-13b-chat.bin",
    "/models/llama-2-70b-chat.bin",
    "/models/code-llama-7b-chat.gguf",
    "/models/code-llama-13b-chat.gguf",
    "/models/code-llama-34b-chat.gguf",
)
"""Ids the stock llama-gpt UI lists (1.0.1 knows the first three)."""
DEFAULT_ALIAS = UI_MODEL_IDS[0]
MIN_CTX = 4096
DEFAULTS = {"MODELS_DIR": "/models", "MODEL_ALIAS": DEFAULT_ALIAS, "N_CTX": str(MIN_CTX), "N_GPU_LAYERS": "auto",
            "HOST": "0.0.0.0", "PORT": "8000"}
STREAM_PATHS = ("/v1/chat/completions", "/v1/completions")
COMPLETION_MAX_TOKENS = 16
"""llama_cpp.server's default max_tokens for /v1/completions (chat has none)."""
CONTEXT_EXCEEDED = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class ConfigError(Exception):
    """A setting the server cannot start with; the message says what to change."""


@dataclass(frozen=True)
class ServeConfig:
    model: Path
    alias: str
    n_ctx: int
    n_gpu_layers: int
    host: str
    port: int
    notes: tuple[str, ...]
    """What the log should tell the user about these choices."""

    def environ(self) -> dict[str, str]:
        """The variables llama_cpp.server reads, with the resolved values."""
        return {"MODEL": str(self.model), "MODEL_ALIAS": self.alias, "N_CTX": str(self.n_ctx),
                "N_GPU_LAYERS": str(self.n_gpu_layers), "HOST": self.host, "PORT": str(self.port)}


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def find_model(models_dir: Path, model: str) -> Path:
    """The model file: ``model`` (absolute, or under ``models_dir``), else the only GGUF under ``models_dir``."""
    if model:
        path = Path(model) if Path(model).is_absolute() else models_dir / model
        if not path.is_file():
            raise ConfigError(f"MODEL={model}: no such file ({path}). {_listing(models_dir)}")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"MODEL={model}: {path} cannot be read by this server's user (uid {os.getuid()}):"
                              " make it readable by others (chmod o+r)")
        if not is_gguf(path):
            raise ConfigError(f"MODEL={model}: {path} is not a GGUF file; llama.cpp reads only GGUF models")
        return path
    if not models_dir.is_dir():
        raise ConfigError(f"{models_dir} does not exist: mount the folder that holds your model there"
                          f" (-v /path/to/models:{models_dir})")
    if not os.access(models_dir, os.R_OK | os.X_OK):
        raise ConfigError(f"{models_dir} cannot be read by this server's user (uid {os.getuid()}): make the folder"
                          " you mount readable by others (chmod o+rx), or set MODEL to a readable file")
    found = sorted(p for p in models_dir.rglob("*") if p.is_file() and is_gguf(p))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"no GGUF model under {models_dir}: mount a folder holding one"
                          f" (-v /path/to/models:{models_dir}) or set MODEL")
    names = ", ".join(str(p) for p in found)
    raise ConfigError(f"{len(found)} GGUF models under {models_dir} ({names}): set MODEL to the one to serve")


def _listing(models_dir: Path) -> str:
    if not models_dir.is_dir():
        return f"{models_dir} does not exist: mount your models folder there"
    files = sorted(str(p) for p in models_dir.rglob("*") if p.is_file())
    return f"Files under {models_dir}: {', '.join(files[:20]) or 'none'}"


def _integer(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name) or DEFAULTS[name]
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value}: not a whole number") from None


def resolve(
    environ: Mapping[str, str],
    *,
    gpu_offload: bool,
    gpu: gpu_layers.GpuMemory | gpu_layers.Query | None = gpu_layers.QUERY_NVML,
) -> ServeConfig:
    """Settings from ``environ`` with the defaults above; ``gpu_offload`` says whether the installed
    llama.cpp has a GPU backend, ``gpu`` is the GPU memory seen for ``N_GPU_LAYERS=auto`` (None: no GPU;
    by default NVML is asked)."""
    notes = []
    model = find_model(Path(environ.get("MODELS_DIR") or DEFAULTS["MODELS_DIR"]), environ.get("MODEL", ""))
    alias = environ.get("MODEL_ALIAS") or DEFAULT_ALIAS
    if alias not in UI_MODEL_IDS:
        notes.append(f"MODEL_ALIAS={alias} is not an id the stock llama-gpt UI lists ({', '.join(UI_MODEL_IDS[:3])}):"
                     " the UI will show no model")
    n_ctx = _integer(environ, "N_CTX")
    if n_ctx == 0:
        notes.append("N_CTX=0: the model's own context length (llama-gpt needs at least 4096)")
    elif n_ctx < MIN_CTX:
        notes.append(f"N_CTX={n_ctx} is below {MIN_CTX}: llama-gpt sends up to 4000 tokens of history plus 1000"
                     " for the answer, so long chats will be refused")
    layers_setting = (environ.get("N_GPU_LAYERS") or DEFAULTS["N_GPU_LAYERS"]).strip().lower()
    if layers_setting == "auto":
        if not gpu_offload:
            n_gpu_layers = 0
            notes.append("N_GPU_LAYERS=auto: this llama-cpp-python build has no GPU backend: every layer on the CPU")
        else:
            try:
                n_gpu_layers, line = gpu_layers.auto_layers(model, n_ctx, gpu=gpu)
            except gpu_layers.GgufError as exc:
                raise ConfigError(str(exc)) from None
            notes.append(line)
    else:
        n_gpu_layers = _integer(environ, "N_GPU_LAYERS")
    return ServeConfig(model, alias, n_ctx, n_gpu_layers, environ.get("HOST") or DEFAULTS["HOST"],
                       _integer(environ, "PORT"), tuple(notes))


def error_body(exc: BaseException, request: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The OpenAI-style error llama_cpp.server gives a plain request, for an error raised in a stream."""
    match = CONTEXT_EXCEEDED.search(str(exc))
    if match:
        prompt, window = int(match[1]), int(match[2])
        if "messages" in request:
            completion = request.get("max_tokens") or 0
            message = (f"This model's maximum context length is {window} tokens. However, you requested"
                       f" {prompt + completion} tokens ({prompt} in the messages, {completion} in the completion)."
                       " Please reduce the length of the messages or completion.")
        else:
            max_tokens = request.get("max_tokens", COMPLETION_MAX_TOKENS)
            completion = COMPLETION_MAX_TOKENS if max_tokens is None else max_tokens
            message = (f"This model's maximum context length is {window} tokens, however you requested"
                       f" {prompt + completion} tokens ({prompt} in your prompt; {completion} for the completion)."
                       " Please reduce your prompt; or completion length.")
        return 400, {"error": {"message": message, "type": "invalid_request_error", "param": "messages",
                               "code": "context_length_exceeded"}}
    return 500, {"error": {"message": str(exc) or type(exc).__name__, "type": "internal_server_error",
                           "param": None, "code": None}}


def _first_error(exc: BaseException) -> BaseException | None:
    """The first ordinary exception in ``exc`` (which may be an exception group from a task group)."""
    group = getattr(exc, "exceptions", None)  # an ExceptionGroup (Python 3.11+)
    if isinstance(group, tuple):
        for inner in group:
            found = _first_error(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, Exception) else None


class StreamErrors:
    """ASGI middleware: a streamed completion's response is held back until its first event, so an error
    raised before it (a prompt longer than the context) becomes a proper JSON error response."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in STREAM_PATHS:
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if message.get("type") != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if not isinstance(request, dict) or request.get("stream") is not True:
            await self.app(scope, replay, send)
            return
        held: list[Message] = []
        released = False

        async def hold(message: Message) -> None:
            nonlocal released
            if released:
                await send(message)
                return
            held.append(message)
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                streaming = message.get("status") == 200 and headers.get(b"content-type", b"").startswith(
                    b"text/event-stream")
                if streaming:
                    return
            elif message["type"] == "http.response.body" and b"data:" not in message.get("body", b""):
                return  # a ping, or the end of a stream with no event: wait for the app's outcome
            released = True
            for m in held:
                await send(m)
            held.clear()

        try:
            await self.app(scope, replay, hold)
        except BaseException as exc:
            error = _first_error(exc)
            if released or error is None:
                raise
            status, payload = error_body(error, request)
            print(f"llamawheel: stream refused with {status}: {payload['error']['message']}", file=sys.stderr,
                  flush=True)
            data = json.dumps(payload).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data, "more_body": False})
            return
        for m in held:
            await send(m)


def main(argv: list[str] | None = None) -> int:
    """Resolve the settings, log them, and run the server until it is stopped."""
    del argv
    import llama_cpp

    try:
        config = resolve(os.environ, gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()))
    except ConfigError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    for note in config.notes:
        print(f"llamawheel: {note}", file=sys.stderr)
    print(f"llamawheel: serving {config.model} as {config.alias} on {config.host}:{config.port}"
          f" (n_ctx {config.n_ctx}, n_gpu_layers {config.n_gpu_layers},"
          f" API key {'required' if os.environ.get('API_KEY') else 'not set'})", file=sys.stderr, flush=True)
    os.environ.update(config.environ())
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import (
        ModelSettings,
        ServerSettings,
    )

    app = create_app(server_settings=ServerSettings(), model_settings=[ModelSettings()])
    uvicorn.run(StreamErrors(app), host=config.host, port=config.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
