"""The image's entry point: ``python -m llamawheel_runtime.serve`` runs llama.cpp's own server (``llama-server``
from the ``llamawheel_server`` wheel: parallel slots over one model, continuous batching) on loopback, behind a front
that serves the stock llama-gpt UI (see ``llama-gpt-contract.md``) and keeps every request in check before it
costs anything (`Guard`, `Admission`, `StreamErrors`; the passing on is `upstream`).

Environment:

- ``MODEL``: the model to serve, absolute or relative to ``MODELS_DIR`` (``/models``). Unset: the one model
  file anywhere under ``/models``, found by its first bytes, whatever its name (llama-gpt names GGUF files
  ``*.bin``). A GGML v3 file (what llama-gpt downloads as ``llama-2-7b-chat.bin``) is converted once to GGUF
  into ``MODEL_CACHE`` (``/cache``, a writable volume) and the conversion is reused on every later start;
  ``/models`` itself is only read.
- ``MODEL_ALIAS``: the id served on ``/v1/models``; default: the model's own path when that is an id the UI
  knows (``/models/llama-2-13b-chat.bin`` is served as itself, so the UI names it 13B), else
  ``/models/llama-2-7b-chat.bin`` (with an id it does not know, the UI spins forever).
- ``PARALLEL``: chats answered at the same time (default 4), each in a slot of its own; the active ones are
  decoded together, one batch per step, so on a GPU four cost little more than one.
- ``N_CTX``: the context of each chat (each slot), default 4096, the least the UI needs (it sends up to 4000
  tokens of history and asks for 1000). The KV cache holds ``N_CTX`` x ``PARALLEL`` tokens.
- ``N_GPU_LAYERS``: ``auto`` (default) fits layers to the free GPU memory, with the KV cache of every slot (see
  `gpu_layers`); a number as llama.cpp takes it (-1: all).
- ``CHAT_TEMPLATE``: a template llama.cpp knows by name (``llama2``, ``chatml``, ...); default: the model's own,
  and ``llama2`` for a model that has none (a converted GGML v3 Llama 2 chat model), as llama-cpp-python did.
- ``API_KEY``: every request needs ``Authorization: Bearer <key>``, checked in constant time before anything
  is queued or read. On an address other machines can reach (the default ``HOST`` is 0.0.0.0) the server refuses
  to start without one, unless ``ALLOW_NO_API_KEY=true`` says that an open server is meant; on loopback
  (``HOST=127.0.0.1``) it may run without. llama-server itself listens on loopback only, with a key of its own
  made at each start.
- ``MAX_BODY_BYTES``: the largest request body (default 1 MiB, about 250,000 tokens of text); past it ``413``.
- ``BODY_TIMEOUT``: seconds a client has to send its whole body (default 30); past it ``408``.
- ``CORS_ORIGINS``: web origins whose pages may call the API from a browser (comma-separated, e.g.
  ``https://chat.example.org``); default none: a request from any other origin gets ``403``, a preflight too.
- ``N_THREADS``: CPU threads; default: the container's CPU quota (cgroup ``cpu.max``), rounded up, and no more
  than the CPUs it may run on, rather than the host's core count.
- ``MAX_QUEUE``: completions that may wait for a free slot (default 8); past that a request gets ``503`` with
  ``Retry-After``.
- ``HOST``/``PORT``: default 0.0.0.0 and 8000.

``/health`` and ``/v1/models`` answer at once while chats stream; ``/metrics`` is Prometheus text (llama-server's
tokens per second, busy slots and deferred requests, and the front's queue). A client that goes away mid-answer
frees its slot at the next decoding step. A prompt longer than a chat's context gets OpenAI's 400
``context_length_exceeded``, streamed or not; a body that is not JSON an OpenAI-style ``400``.

Standard library only at import time: uvicorn is imported in `main`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import hmac
import importlib.util
import ipaddress
import json
import math
import os
import re
import secrets
import signal
import socket
import subprocess  # not core.proc: this file is copied to other machines and imports no llamawheel
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import convert, gpu_layers, upstream

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
DEFAULTS = {"MODELS_DIR": "/models", "MODEL_CACHE": "/cache",
            "MODEL_ALIAS": DEFAULT_ALIAS, "N_CTX": str(MIN_CTX), "N_GPU_LAYERS": "auto",
            "HOST": "0.0.0.0", "PORT": "8000", "MAX_QUEUE": "8", "PARALLEL": "4"}
UI_MODELS_DIR = "/models"
"""Where the UI's ids say the models are (``/models/llama-2-13b-chat.bin``)."""
RETRY_AFTER_SECONDS = 10
GPU_BACKENDS = ("cuda", "hip", "vulkan", "sycl", "musa")
"""ggml's GPU backend modules (``libggml-cuda.so``): a wheel with one can offload layers."""
FRONT_NICENESS = 10
"""How much the front (this process, after llama-server started) yields the CPU to llama-server."""
STREAM_PATHS = ("/v1/chat/completions", "/v1/completions")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


KNOWN_KEYS = ("sk-llamawheel",)
"""Keys that once were defaults, the same for everyone: refused."""
MAX_BODY_BYTES = 2**20
BODY_TIMEOUT_SECONDS = 30.0
TRUE = ("1", "true", "yes", "on")


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
    n_threads: int = 1
    threads_why: str = ""
    """Why that many threads: set, or the cgroup's CPU quota."""
    max_queue: int = 8
    parallel: int = 4
    chat_template: str = ""
    """A template llama.cpp knows by name; empty: the model's own."""
    template_why: str = ""

    def server_args(self, port: int) -> list[str]:
        """llama-server's arguments: the model on loopback ``port``, ``parallel`` slots of ``n_ctx`` each."""
        args = ["--model", str(self.model), "--alias", self.alias, "--host", "127.0.0.1", "--port", str(port),
                "--parallel", str(self.parallel), "--ctx-size", str(self.n_ctx * self.parallel),
                "--n-gpu-layers", str(self.n_gpu_layers), "--threads", str(self.n_threads),
                "--threads-batch", str(self.n_threads), "--cont-batching", "--metrics", "--no-webui",
                "--fit", "off"]
        # a template named is one of llama.cpp's built-in ones, which its Jinja engine does not know by name
        return args + (["--chat-template", self.chat_template, "--no-jinja"] if self.chat_template else [])


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def is_model(path: Path) -> bool:
    """A GGUF file, or a GGML ggjt file (converted before it is served)."""
    return is_gguf(path) or convert.read_header(path) is not None


def find_model(models_dir: Path, model: str) -> Path:
    """The model file: ``model`` (absolute, or under ``models_dir``), else the only model under ``models_dir``."""
    if model:
        path = Path(model) if Path(model).is_absolute() else models_dir / model
        if not path.is_file():
            raise ConfigError(f"MODEL={model}: no such file ({path}). {_listing(models_dir)}")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"MODEL={model}: {path} cannot be read by this server's user (uid {os.getuid()}):"
                              " make it readable by others (chmod o+r)")
        if not is_model(path):
            raise ConfigError(f"MODEL={model}: {path} is neither a GGUF file nor a GGML v3 (ggjt) one")
        return path
    if not models_dir.is_dir():
        raise ConfigError(f"{models_dir} does not exist: mount the folder that holds your model there"
                          f" (-v /path/to/models:{models_dir})")
    if not os.access(models_dir, os.R_OK | os.X_OK):
        raise ConfigError(f"{models_dir} cannot be read by this server's user (uid {os.getuid()}): make the folder"
                          " you mount readable by others (chmod o+rx), or set MODEL to a readable file")
    found = sorted(p for p in models_dir.rglob("*") if p.is_file() and is_model(p))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"no GGUF or GGML v3 model under {models_dir}: mount a folder holding one"
                          f" (-v /path/to/models:{models_dir}) or set MODEL")
    names = ", ".join(str(p) for p in found)
    raise ConfigError(f"{len(found)} models under {models_dir} ({names}): set MODEL to the one to serve")


def _listing(models_dir: Path) -> str:
    if not models_dir.is_dir():
        return f"{models_dir} does not exist: mount your models folder there"
    files = sorted(str(p) for p in models_dir.rglob("*") if p.is_file())
    return f"Files under {models_dir}: {', '.join(files[:20]) or 'none'}"


def default_alias(model: Path, models_dir: Path) -> str:
    """The model's own path as the UI would name it, when that is an id the UI knows; else the 7B id."""
    try:
        own = f"{UI_MODELS_DIR}/{model.relative_to(models_dir).as_posix()}"
    except ValueError:
        own = str(model)
    return own if own in UI_MODEL_IDS else DEFAULT_ALIAS


def _cgroup_quota(cgroup_root: Path, proc_cgroup: Path) -> float | None:
    """CPUs this process may use by its cgroup's quota (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` of v1),
    the smallest along its cgroup path; None without a quota."""
    quotas: list[float] = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines or ["0::/"]:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2
            base = cgroup_root
        elif "cpu" in controllers.split(","):
            base = next((cgroup_root / n for n in (controllers, "cpu", "cpu,cpuacct") if (cgroup_root / n).is_dir()),
                        cgroup_root / controllers)
        else:
            continue
        here = base / path.lstrip("/")
        for folder in (here, *here.parents):
            if base not in (folder, *folder.parents):
                break
            quotas += _quota_in(folder)
    return min(quotas) if quotas else None


def _quota_in(folder: Path) -> list[float]:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return [] if quota == "max" else [int(quota) / int(period)]
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
        return [quota_us / period_us] if quota_us > 0 and period_us > 0 else []
    except (OSError, ValueError):
        return []


def default_threads(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup"),
                    cpus: int | None = None) -> tuple[int, str]:
    """CPU threads for llama.cpp: the cgroup's quota rounded up, no more than the CPUs this process may run
    on; and the words that say why."""
    available = cpus if cpus is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                               else (os.cpu_count() or 1))
    quota = _cgroup_quota(cgroup_root, proc_cgroup)
    if quota is None:
        return available, f"{available} CPU(s) this container may run on, no CPU quota"
    threads = max(1, min(available, math.ceil(quota - 1e-9)))
    return threads, f"the container's CPU quota of {quota:g} CPU(s) ({available} CPU(s) visible)"


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
    threads_for: Callable[[], tuple[int, str]] = default_threads,
    to_gguf: Callable[[Path, Path], Path] | None = None,
) -> ServeConfig:
    """Settings from ``environ`` with the defaults above; ``gpu_offload`` says whether the installed
    llama.cpp has a GPU backend, ``gpu`` is the GPU memory seen for ``N_GPU_LAYERS=auto`` (None: no GPU;
    by default NVML is asked), ``threads_for`` the CPU threads when ``N_THREADS`` is not set (the cgroup's),
    ``to_gguf`` converts a GGML file into the cache folder (by default `convert.ensure_gguf`)."""
    notes = []
    models_dir = Path(environ.get("MODELS_DIR") or DEFAULTS["MODELS_DIR"])
    found = find_model(models_dir, environ.get("MODEL", ""))
    alias = environ.get("MODEL_ALIAS") or default_alias(found, models_dir)
    model = found
    if not is_gguf(found):
        cache_dir = Path(environ.get("MODEL_CACHE") or DEFAULTS["MODEL_CACHE"])
        try:
            model = (to_gguf or _convert)(found, cache_dir)
        except convert.ConversionError as exc:
            raise ConfigError(str(exc)) from None
    if alias not in UI_MODEL_IDS:
        notes.append(f"MODEL_ALIAS={alias} is not an id the stock llama-gpt UI lists ({', '.join(UI_MODEL_IDS[:3])}):"
                     " the UI will show no model")
    parallel = _integer(environ, "PARALLEL")
    if parallel < 1:
        raise ConfigError(f"PARALLEL={parallel}: at least 1 (chats answered at the same time)")
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
                n_gpu_layers, line = gpu_layers.auto_layers(model, n_ctx, gpu=gpu, sequences=parallel)
            except gpu_layers.GgufError as exc:
                raise ConfigError(str(exc)) from None
            notes.append(line)
    else:
        n_gpu_layers = _integer(environ, "N_GPU_LAYERS")
    if environ.get("N_THREADS"):
        n_threads, why = _integer(environ, "N_THREADS"), "set by N_THREADS"
        if n_threads < 1:
            raise ConfigError(f"N_THREADS={n_threads}: at least 1")
    else:
        n_threads, why = threads_for()
    max_queue = _integer(environ, "MAX_QUEUE")
    if max_queue < 0:
        raise ConfigError(f"MAX_QUEUE={max_queue}: 0 or more")
    template = (environ.get("CHAT_TEMPLATE") or "").strip()
    if template:
        template_why = f"chat template {template} (CHAT_TEMPLATE)"
    elif _has_chat_template(model):
        template_why = "the model's own chat template"
    else:
        template, template_why = "llama2", "chat template llama2: the model has none (CHAT_TEMPLATE names another)"
    return ServeConfig(model, alias, n_ctx, n_gpu_layers, environ.get("HOST") or DEFAULTS["HOST"],
                       _integer(environ, "PORT"), tuple(notes), n_threads, why, max_queue, parallel, template,
                       template_why)


def _has_chat_template(model: Path) -> bool:
    try:
        return "tokenizer.chat_template" in gpu_layers.read_gguf_header(model).keys
    except (OSError, gpu_layers.GgufError):
        return False


@dataclass(frozen=True)
class Security:
    """Who may use the server, and how much a request may cost before it is answered."""

    api_key: str
    """Empty: no key (only on loopback, or with ALLOW_NO_API_KEY)."""
    max_body: int = MAX_BODY_BYTES
    body_timeout: float = BODY_TIMEOUT_SECONDS
    cors_origins: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listening address) is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def security(environ: Mapping[str, str]) -> Security:
    """The key, limits and CORS origins from ``environ``; refuses to serve other machines without a key."""
    host = environ.get("HOST") or DEFAULTS["HOST"]
    key = environ.get("API_KEY", "").strip()
    notes = []
    if key in KNOWN_KEYS:
        raise ConfigError(f"API_KEY={key} is the key earlier llamawheel compose files gave everyone: make your own"
                          " (llamawheel compose-env writes a new one into docker/.env)")
    if not key:
        if not is_loopback(host):
            if (environ.get("ALLOW_NO_API_KEY") or "").strip().lower() not in TRUE:
                raise ConfigError(
                    f"HOST={host} can be reached from other machines and API_KEY is not set: set API_KEY"
                    " (llamawheel compose-env makes one), or HOST=127.0.0.1 to serve this machine only,"
                    " or ALLOW_NO_API_KEY=true if an open server is really meant")
            notes.append(f"no API key on {host} (ALLOW_NO_API_KEY): anyone who reaches this port can use it")
    elif len(key) < 16:
        notes.append(f"API_KEY is {len(key)} characters long: a guessable key (llamawheel compose-env makes one of 46)")
    try:
        max_body = int(environ.get("MAX_BODY_BYTES") or MAX_BODY_BYTES)
        body_timeout = float(environ.get("BODY_TIMEOUT") or BODY_TIMEOUT_SECONDS)
    except ValueError:
        raise ConfigError("MAX_BODY_BYTES and BODY_TIMEOUT must be numbers (bytes, seconds)") from None
    if max_body < 1024 or body_timeout <= 0:
        raise ConfigError(f"MAX_BODY_BYTES={max_body} (at least 1024), BODY_TIMEOUT={body_timeout:g} (more than 0)")
    origins = tuple(o.strip().rstrip("/") for o in (environ.get("CORS_ORIGINS") or "").split(",") if o.strip())
    for origin in origins:
        if origin == "*" or not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(f"CORS_ORIGINS: {origin!r} is not an origin like https://chat.example.org"
                              " (every origin, '*', is not allowed)")
    return Security(key, max_body, body_timeout, origins, tuple(notes))


def _convert(model: Path, cache_dir: Path) -> Path:
    return convert.ensure_gguf(model, cache_dir, say=lambda line: print(f"llamawheel: {line}", file=sys.stderr,
                                                                        flush=True))


_error = upstream.openai_error


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """OpenAI's error shape for an error raised before a stream's first event (llama-server gone, say)."""
    return 500, _error(str(exc) or type(exc).__name__, "internal_server_error", None)


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


async def _send_json(send: Send, status: int, payload: dict[str, Any],
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app ``body`` (read already) as one message, then whatever comes next (the
    client's disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _is_completion(scope: Scope) -> bool:
    return scope.get("type") == "http" and scope.get("method") == "POST" and scope.get("path") in STREAM_PATHS


class Admission:
    """ASGI middleware: ``slots`` completions are answered at once (llama-server's slots) and at most ``max_queue``
    more wait for one; past that a request gets OpenAI's error shape with ``503`` and ``Retry-After``, at once,
    instead of an answer much later. The counts are the front's ``/metrics`` (`upstream.Gauges`)."""

    def __init__(self, app: App, gauges: upstream.Gauges) -> None:
        self.app = app
        self.gauges = gauges

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_completion(scope):
            await self.app(scope, receive, send)
            return
        g = self.gauges
        if g.in_flight >= g.slots + g.max_queue:
            message = (f"the server is busy: {g.slots} answer(s) are being written and {g.in_flight - g.slots}"
                       f" request(s) wait for a free slot, as many as it queues (PARALLEL={g.slots},"
                       f" MAX_QUEUE={g.max_queue}); try again in {RETRY_AFTER_SECONDS} s")
            g.refused += 1
            print(f"llamawheel: refused with 503: {message}", file=sys.stderr, flush=True)
            await _send_json(send, 503, _error(message, "server_error", "server_busy"),
                             ((b"retry-after", str(RETRY_AFTER_SECONDS).encode()),))
            return
        g.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            g.in_flight -= 1


class StreamErrors:
    """ASGI middleware: a body that is not JSON gets an OpenAI-style 400; a streamed completion's response is held
    back until its first event, so an error raised before it (llama-server gone) becomes a JSON error response,
    never an empty 200 stream."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_completion(scope):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if message.get("type") != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replay = _replaying(body, receive)

        try:
            request = json.loads(body)
        except ValueError as exc:
            why = "it is empty" if not body.strip() else f"{exc}"
            await _send_json(send, 400, _error(f"the request body is not JSON: {why}", "invalid_request_error", None))
            return
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
            status, payload = error_body(error)
            print(f"llamawheel: stream refused with {status}: {payload['error']['message']}", file=sys.stderr,
                  flush=True)
            await _send_json(send, status, payload)
            return
        for m in held:
            await send(m)


class Guard:
    """ASGI middleware, outermost: a request is refused before it costs anything. In order: a browser's
    preflight from an origin not in ``CORS_ORIGINS`` (403; one from a listed origin is answered here), and on a
    server without a key any request a page of another origin sends (403); a missing or wrong key (401,
    compared in constant time, before the body is read or anything is queued); a body over ``max_body`` (413,
    at once when ``Content-Length`` says so) or not sent within ``body_timeout`` (408). What passes reaches the
    app with its body read in full. The app's own CORS headers (llama-server may allow every origin with
    credentials) are dropped and replaced by this middleware's."""

    def __init__(self, app: App, settings: Security) -> None:
        self.app = app
        self.settings = settings
        self._key = hashlib.sha256(settings.api_key.encode()).digest() if settings.api_key else None

    async def _refuse(self, send: Send, status: int, payload: dict[str, Any],
                      headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        await _send_json(send, status, payload, ((b"connection", b"close"), *headers))

    def _allowed_origin(self, origin: str, host: str) -> bool:
        return origin in self.settings.cors_origins or origin.split("://", 1)[-1] == host

    def _authorized(self, authorization: bytes) -> bool:
        if self._key is None:
            return True
        scheme, _, token = authorization.strip().partition(b" ")
        given = hashlib.sha256(token.strip()).digest()
        return hmac.compare_digest(given, self._key) and scheme.lower() == b"bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            if scope.get("type") == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
        host = headers.get(b"host", b"").decode("latin-1")
        cors: tuple[tuple[bytes, bytes], ...] = ()
        preflight = scope.get("method") == "OPTIONS" and b"access-control-request-method" in headers
        if origin and self._allowed_origin(origin, host):
            cors = ((b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"))
            if preflight:
                await send({"type": "http.response.start", "status": 204, "headers": [
                    *cors, (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                    (b"access-control-allow-headers", b"authorization, content-type"),
                    (b"access-control-max-age", b"600")]})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        elif origin and (preflight or self._key is None):
            # A browser asks first before it sends a key; without a key, a page's plain request is refused too.
            await self._refuse(send, 403, _error(
                f"requests from web pages of {origin} are not allowed: list the origin in CORS_ORIGINS to allow"
                " them", "invalid_request_error", "origin_not_allowed"))
            return
        if not self._authorized(headers.get(b"authorization", b"")):
            await self._refuse(send, 401, _error(
                "Incorrect API key provided: send the server's API_KEY as 'Authorization: Bearer <key>'",
                "invalid_request_error", "invalid_api_key"), ((b"www-authenticate", b"Bearer"), *cors))
            return
        too_big = _error(f"the request body is larger than this server takes ({self.settings.max_body} bytes,"
                         " MAX_BODY_BYTES)", "invalid_request_error", "request_too_large")
        length = headers.get(b"content-length", b"")
        if length.strip().isdigit() and int(length) > self.settings.max_body:
            await self._refuse(send, 413, too_big, cors)
            return
        body = b""
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            chunks: list[bytes] = []
            size = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.body_timeout
            while True:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    await self._refuse(send, 408, _error(
                        f"the request body did not arrive within {self.settings.body_timeout:g} s (BODY_TIMEOUT)",
                        "invalid_request_error", "request_timeout"), cors)
                    return
                if message.get("type") == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.settings.max_body:
                    await self._refuse(send, 413, too_big, cors)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
        replay = _replaying(body, receive)

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")
                        and k.lower() != b"vary"]
                message = {**message, "headers": [*kept, *cors]}
            await send(message)

        await self.app(scope, replay, with_cors)


def gpu_offload() -> bool:
    """Whether the installed llama-cpp-python has a GPU backend module (found without loading it here: the server
    process loads it)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise ConfigError("llama-cpp-python is not installed in this Python")
    lib = Path(spec.origin).parent / "lib"
    return any((lib / f"libggml-{name}.so").is_file() for name in GPU_BACKENDS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None]:
    """For the child, before it runs: killed when ``parent`` ends, however it ends (killed, or stopped by a signal
    while the model loads), so that no llama-server outlives the front; SIGTERM and SIGINT not blocked."""
    def arrange() -> None:
        # SIGKILL: a process started with SIGTERM blocked (buildah run's children are) could not be told otherwise
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, convert.STOP_SIGNALS)  # so that Backend.stop's SIGTERM is heard
        if os.getppid() != parent:  # it ended before the line above
            os._exit(1)

    return arrange


class _Stopped(Exception):
    """SIGTERM once uvicorn has shut down (it raises again the signal it caught): ``main`` goes on to stop
    llama-server and to say how it ended (without a handler, the default action would end the process there)."""


def _graceful(signum: int, frame: object) -> None:
    raise _Stopped


class Backend:
    """llama-server as a child process on loopback, with a key made for this start."""

    def __init__(self, config: ServeConfig) -> None:
        self.port = free_port()
        self.key = secrets.token_urlsafe(32)
        env = {**os.environ, "LLAMA_API_KEY": self.key}
        env.pop("API_KEY", None)
        self.process = subprocess.Popen([sys.executable, "-m", "llamawheel_server", *config.server_args(self.port)],
                                        env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with(os.getpid()))
        self.stopping = False
        self.died = False
        """Whether llama-server stopped on its own, before the front stopped it."""

    def wait_ready(self, poll: float = 0.25) -> None:
        """Until llama-server has loaded the model (its ``/health`` says ok); raises ConfigError if it stops."""
        url = f"http://127.0.0.1:{self.port}/health"
        while True:
            code = self.process.poll()
            if code is not None:
                raise ConfigError(f"llama-server stopped while loading the model (exit status {code}): its own"
                                  " messages are above")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, ValueError):
                pass
            time.sleep(poll)

    def watch(self) -> None:
        """Stop this server (SIGTERM to itself) when llama-server stops on its own, so that the container stops
        rather than answering 502 forever."""
        def wait() -> None:
            code = self.process.wait()
            if not self.stopping:
                self.died = True
                print(f"llamawheel: ERROR llama-server stopped (exit status {code}): stopping", file=sys.stderr,
                      flush=True)
                os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=wait, daemon=True).start()

    def stop(self) -> None:
        self.stopping = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main(argv: list[str] | None = None) -> int:
    """Resolve the settings, log them, start llama-server and serve in front of it until stopped. Until the front
    runs (a model converted, loaded), SIGTERM and SIGINT stop it at once, leaving nothing half-written
    (`convert.stop_on_signals`): as a container's PID 1 it would otherwise ignore ``docker stop``."""
    del argv
    signal.pthread_sigmask(signal.SIG_UNBLOCK, convert.STOP_SIGNALS)  # docker stop's SIGTERM, whatever blocked it
    backend: Backend | None = None
    try:
        with convert.stop_on_signals():
            try:
                guard = security(os.environ)
                config = resolve(os.environ, gpu_offload=gpu_offload())
            except ConfigError as exc:
                print(f"ERROR {exc}", file=sys.stderr)
                return 2
            for note in (*guard.notes, *config.notes):
                print(f"llamawheel: {note}", file=sys.stderr)
            origins = "from " + ", ".join(guard.cors_origins) if guard.cors_origins else "refused"
            print(f"llamawheel: serving {config.model} as {config.alias} on {config.host}:{config.port}"
                  f" ({config.parallel} chat(s) at once, n_ctx {config.n_ctx} each,"
                  f" n_gpu_layers {config.n_gpu_layers}, {config.n_threads} thread(s): {config.threads_why},"
                  f" {config.template_why},"
                  f" up to {config.max_queue} request(s) queued,"
                  f" API key {'required' if guard.api_key else 'not set'}, bodies up to {guard.max_body} bytes,"
                  f" cross-origin requests {origins})", file=sys.stderr, flush=True)
            backend = Backend(config)
            try:
                backend.wait_ready()
            except ConfigError as exc:
                print(f"ERROR {exc}", file=sys.stderr)
                return 1
            import uvicorn
        backend.watch()
        # The front only passes bytes on: on a machine whose cores llama.cpp's threads fill, it yields to them
        # (a step of theirs waits for the slowest thread), so one chat streams as fast as llama-server alone.
        os.nice(FRONT_NICENESS)
        gauges = upstream.Gauges(config.parallel, config.max_queue)
        app = upstream.Upstream("127.0.0.1", backend.port, backend.key, gauges)
        signal.signal(signal.SIGTERM, _graceful)
        with contextlib.suppress(_Stopped):
            uvicorn.run(Guard(Admission(StreamErrors(app), gauges), guard), host=config.host, port=config.port,
                        server_header=False)
        return 1 if backend.died else 0
    finally:
        if backend is not None:
            backend.stop()


if __name__ == "__main__":
    raise SystemExit(main())
