"""The image's entry point: finding the model, resolving the settings, and the OpenAI-style error a streamed
request gets when its prompt is longer than the context.

No llama_cpp, no uvicorn, no network. `StreamErrors` is driven by small fake ASGI apps written here: the real
server path (llama_cpp.server behind uvicorn, sse_starlette's stream, a real over-long chat) is covered by
tests/integration/test_image.py; these check the middleware's ordering rules: what it holds back, when it lets go,
and what the client receives when the app fails before its first event.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from llamawheel.runtime import gpu_layers, serve, upstream

from .gguf_files import VOCAB, model_tensors, write_gguf

MIB = 2**20
GIB = 2**30
BLOCKS = 4

Message = MutableMapping[str, Any]
Receive = serve.Receive
Send = serve.Send
App = serve.App

if sys.version_info >= (3, 11):
    from builtins import ExceptionGroup

needs_exception_group = pytest.mark.skipif(sys.version_info < (3, 11),
                                           reason="the builtin ExceptionGroup is Python 3.11+")


def fake_gguf(path: Path) -> Path:
    """Enough for find_model: it reads only the magic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + bytes(28))
    return path


def real_gguf(path: Path) -> Path:
    """A small llama model (see gguf_files): the output layer is output.weight (12800 bytes) + output_norm (256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_gguf(path, model_tensors(BLOCKS))


def config_error(models_dir: Path, model: str) -> str:
    with pytest.raises(serve.ConfigError) as caught:
        serve.find_model(models_dir, model)
    return str(caught.value)


# --- find_model ---------------------------------------------------------------------------------------------


def test_model_given_as_an_absolute_path(tmp_path: Path) -> None:
    model = fake_gguf(tmp_path / "elsewhere" / "m.gguf")
    fake_gguf(tmp_path / "models" / "other.gguf")
    assert serve.find_model(tmp_path / "models", str(model)) == model


def test_model_given_relative_to_the_models_dir(tmp_path: Path) -> None:
    model = fake_gguf(tmp_path / "sub" / "llama-2-7b-chat.bin")
    fake_gguf(tmp_path / "other.gguf")
    assert serve.find_model(tmp_path, "sub/llama-2-7b-chat.bin") == tmp_path / "sub" / "llama-2-7b-chat.bin"
    assert model.is_file()


def test_a_missing_model_names_the_path_and_lists_the_models_dir(tmp_path: Path) -> None:
    fake_gguf(tmp_path / "a.gguf")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("hello")
    message = config_error(tmp_path, "missing.gguf")
    assert message == (f"MODEL=missing.gguf: no such file ({tmp_path / 'missing.gguf'})."
                       f" Files under {tmp_path}: {tmp_path / 'a.gguf'}, {tmp_path / 'notes' / 'README.txt'}")


def test_a_missing_model_in_an_empty_or_missing_models_dir(tmp_path: Path) -> None:
    assert config_error(tmp_path, "m.gguf").endswith(f"Files under {tmp_path}: none")
    gone = tmp_path / "gone"
    assert config_error(gone, "m.gguf").endswith(f"{gone} does not exist: mount your models folder there")


def test_a_model_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "llama-2-7b-chat.bin").write_bytes(b"<html>not found</html>" + bytes(100))
    assert config_error(tmp_path, "llama-2-7b-chat.bin") == (
        f"MODEL=llama-2-7b-chat.bin: {tmp_path / 'llama-2-7b-chat.bin'} is neither a GGUF file nor a GGML v3"
        " (ggjt) one")


def test_a_model_that_is_a_directory_is_no_such_file(tmp_path: Path) -> None:
    (tmp_path / "dir.gguf").mkdir()
    assert config_error(tmp_path, "dir.gguf").startswith(f"MODEL=dir.gguf: no such file ({tmp_path / 'dir.gguf'})")


def test_unset_model_takes_the_one_gguf_anywhere_under_the_dir(tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("GGU: not a model")
    (tmp_path / "empty").write_bytes(b"")
    model = fake_gguf(tmp_path / "llama" / "7b" / "llama-2-7b-chat.bin")
    assert serve.find_model(tmp_path, "") == model


def test_unset_model_with_no_gguf_says_how_to_mount_one(tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("not a model")
    assert config_error(tmp_path, "") == (
        f"no GGUF or GGML v3 model under {tmp_path}: mount a folder holding one (-v /path/to/models:{tmp_path})"
        " or set MODEL")


def test_unset_model_with_two_ggufs_names_both(tmp_path: Path) -> None:
    a = fake_gguf(tmp_path / "a.gguf")
    b = fake_gguf(tmp_path / "sub" / "b.bin")
    assert config_error(tmp_path, "") == (
        f"2 models under {tmp_path} ({a}, {b}): set MODEL to the one to serve")


def test_a_missing_models_dir_is_named(tmp_path: Path) -> None:
    gone = tmp_path / "models"
    assert config_error(gone, "") == (
        f"{gone} does not exist: mount the folder that holds your model there (-v /path/to/models:{gone})")


# --- resolve ------------------------------------------------------------------------------------------------

NO_BACKEND = "N_GPU_LAYERS=auto: this llama-cpp-python build has no GPU backend: every layer on the CPU"


def test_defaults(tmp_path: Path) -> None:
    model = fake_gguf(tmp_path / "llama-2-7b-chat.bin")
    config = serve.resolve({"MODELS_DIR": str(tmp_path)}, gpu_offload=False, threads_for=lambda: (3, "quota"))
    assert config == serve.ServeConfig(model=model, alias="/models/llama-2-7b-chat.bin", n_ctx=4096,
                                       n_gpu_layers=0, host="0.0.0.0", port=8000, notes=(NO_BACKEND,),
                                       n_threads=3, threads_why="quota", max_queue=8, parallel=4,
                                       chat_template="llama2", template_why="chat template llama2: the model has"
                                       " none (CHAT_TEMPLATE names another)")
    assert config.server_args(4321) == [
        "--model", str(model), "--alias", "/models/llama-2-7b-chat.bin", "--host", "127.0.0.1", "--port", "4321",
        "--parallel", "4", "--ctx-size", "16384", "--n-gpu-layers", "0", "--threads", "3", "--threads-batch", "3",
        "--cont-batching", "--metrics", "--no-webui", "--fit", "off", "--chat-template", "llama2", "--no-jinja"]


def test_empty_values_mean_the_defaults(tmp_path: Path) -> None:
    fake_gguf(tmp_path / "m.gguf")
    environ = {"MODELS_DIR": str(tmp_path), "MODEL": "", "MODEL_ALIAS": "", "N_CTX": "", "N_GPU_LAYERS": "",
               "HOST": "", "PORT": ""}
    config = serve.resolve(environ, gpu_offload=False)
    assert (config.alias, config.n_ctx, config.n_gpu_layers, config.host, config.port) == (
        "/models/llama-2-7b-chat.bin", 4096, 0, "0.0.0.0", 8000)


def test_the_default_models_dir_is_slash_models() -> None:
    if Path("/models").exists():
        pytest.skip("this machine has a /models folder")
    with pytest.raises(serve.ConfigError, match=r"^/models does not exist"):
        serve.resolve({}, gpu_offload=False)


def test_settings_from_the_environment(tmp_path: Path) -> None:
    model = fake_gguf(tmp_path / "x" / "m.gguf")
    environ = {"MODEL": str(model), "MODELS_DIR": str(tmp_path / "unused"),
               "MODEL_ALIAS": "/models/code-llama-13b-chat.gguf", "N_CTX": "8192", "N_GPU_LAYERS": "20",
               "HOST": "127.0.0.1", "PORT": "9000", "N_THREADS": "5", "MAX_QUEUE": "2", "PARALLEL": "2",
               "CHAT_TEMPLATE": "chatml"}
    config = serve.resolve(environ, gpu_offload=True, gpu=None)
    assert config == serve.ServeConfig(model=model, alias="/models/code-llama-13b-chat.gguf", n_ctx=8192,
                                       n_gpu_layers=20, host="127.0.0.1", port=9000, notes=(), n_threads=5,
                                       threads_why="set by N_THREADS", max_queue=2, parallel=2,
                                       chat_template="chatml", template_why="chat template chatml (CHAT_TEMPLATE)")
    args = config.server_args(1234)
    assert args[args.index("--ctx-size") + 1] == "16384" and args[args.index("--parallel") + 1] == "2"
    assert args[-3:] == ["--chat-template", "chatml", "--no-jinja"]


def test_a_model_with_its_own_chat_template_keeps_it(tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "m.gguf", model_tensors(BLOCKS), chat_template="{{ x }}" * 400)
    config = serve.resolve({"MODELS_DIR": str(tmp_path), "N_GPU_LAYERS": "0"}, gpu_offload=False)
    assert (config.model, config.chat_template, config.template_why) == (model, "", "the model's own chat template")
    assert "--chat-template" not in config.server_args(1234)


@pytest.mark.parametrize("modules,offload", [(["libggml-cpu-haswell.so", "libggml-base.so"], False),
                                             (["libggml-cpu-haswell.so", "libggml-cuda.so"], True)])
def test_gpu_offload_is_seen_in_the_wheels_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  modules: list[str], offload: bool) -> None:
    (tmp_path / "llama_cpp" / "lib").mkdir(parents=True)
    (tmp_path / "llama_cpp" / "__init__.py").write_text("raise ImportError('not imported: only found')\n")
    for name in modules:
        (tmp_path / "llama_cpp" / "lib" / name).write_bytes(b"\x7fELF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert serve.gpu_offload() is offload


def test_parallel_below_one_is_refused(tmp_path: Path) -> None:
    fake_gguf(tmp_path / "m.gguf")
    with pytest.raises(serve.ConfigError, match="PARALLEL=0: at least 1"):
        serve.resolve({"MODELS_DIR": str(tmp_path), "PARALLEL": "0"}, gpu_offload=False)


def test_n_gpu_layers_minus_one_passes_through(tmp_path: Path) -> None:
    fake_gguf(tmp_path / "m.gguf")
    config = serve.resolve({"MODELS_DIR": str(tmp_path), "N_GPU_LAYERS": "-1"}, gpu_offload=False)
    assert (config.n_gpu_layers, config.notes) == (-1, ())


def test_an_alias_the_ui_does_not_know_gets_a_note(tmp_path: Path) -> None:
    fake_gguf(tmp_path / "m.gguf")
    config = serve.resolve({"MODELS_DIR": str(tmp_path), "MODEL_ALIAS": "my-model", "N_GPU_LAYERS": "0"},
                           gpu_offload=False)
    assert config.alias == "my-model"
    assert config.notes == (
        "MODEL_ALIAS=my-model is not an id the stock llama-gpt UI lists (/models/llama-2-7b-chat.bin,"
        " /models/llama-2-13b-chat.bin, /models/llama-2-70b-chat.bin): the UI will show no model",)


def test_a_context_below_4096_gets_a_note(tmp_path: Path) -> None:
    fake_gguf(tmp_path / "m.gguf")
    config = serve.resolve({"MODELS_DIR": str(tmp_path), "N_CTX": "2048"}, gpu_offload=False)
    assert config.n_ctx == 2048
    assert config.notes == (
        "N_CTX=2048 is below 4096: llama-gpt sends up to 4000 tokens of history plus 1000 for the answer,"
        " so long chats will be refused", NO_BACKEND)


def test_a_context_of_0_is_the_models_own_and_says_so(tmp_path: Path) -> None:
    fake_gguf(tmp_path / "m.gguf")
    config = serve.resolve({"MODELS_DIR": str(tmp_path), "N_CTX": "0"}, gpu_offload=False)
    assert config.n_ctx == 0
    assert config.notes == ("N_CTX=0: the model's own context length (llama-gpt needs at least 4096)", NO_BACKEND)


@pytest.mark.parametrize(("name", "value"), [("N_CTX", "abc"), ("N_GPU_LAYERS", "all"), ("PORT", "80a")])
def test_a_setting_that_is_not_a_number_is_refused(tmp_path: Path, name: str, value: str) -> None:
    fake_gguf(tmp_path / "m.gguf")
    with pytest.raises(serve.ConfigError) as caught:
        serve.resolve({"MODELS_DIR": str(tmp_path), name: value}, gpu_offload=False)
    assert str(caught.value) == f"{name}={value}: not a whole number"


def test_a_bad_model_is_refused_before_the_settings(tmp_path: Path) -> None:
    with pytest.raises(serve.ConfigError, match="no GGUF or GGML v3 model under"):
        serve.resolve({"MODELS_DIR": str(tmp_path), "N_CTX": "abc"}, gpu_offload=False)


def test_auto_without_a_gpu_backend_puts_every_layer_on_the_cpu(tmp_path: Path) -> None:
    fake_gguf(tmp_path / "m.gguf")  # not even read: no GPU backend, nothing to size
    config = serve.resolve({"MODELS_DIR": str(tmp_path), "N_GPU_LAYERS": " Auto "}, gpu_offload=False,
                           gpu=gpu_layers.GpuMemory("Test GPU", 8 * GIB, 8 * GIB))
    assert (config.n_gpu_layers, config.notes) == (0, (NO_BACKEND,))


def test_auto_with_a_backend_but_no_gpu(tmp_path: Path) -> None:
    fake_gguf(tmp_path / "m.gguf")
    config = serve.resolve({"MODELS_DIR": str(tmp_path)}, gpu_offload=True, gpu=None)
    assert (config.n_gpu_layers, config.notes) == (0, (gpu_layers.NO_GPU,))
    assert "no NVIDIA GPU visible" in config.notes[0]


def test_auto_with_plenty_of_memory_puts_every_layer_on_the_gpu(tmp_path: Path) -> None:
    model = real_gguf(tmp_path / "m.gguf")
    gpu = gpu_layers.GpuMemory("Test GPU", 8 * GIB, 4 * GIB)
    config = serve.resolve({"MODELS_DIR": str(tmp_path)}, gpu_offload=True, gpu=gpu)
    assert config.n_gpu_layers == BLOCKS + 1
    line = gpu_layers.plan(gpu_layers.read_layout(model), 4096, 4 * GIB, device="Test GPU", sequences=4).describe()
    assert config.notes == (line,)
    assert line.startswith("N_GPU_LAYERS=auto: all 5 layers on the GPU (") and "4.0 GiB free on Test GPU" in line
    assert "KV cache at n_ctx 4096 for each of 4 chats" in line
    args = config.server_args(1234)
    assert args[args.index("--n-gpu-layers") + 1] == "5"


def test_auto_with_little_memory_puts_fewer_layers_on_the_gpu(tmp_path: Path) -> None:
    real_gguf(tmp_path / "m.gguf")
    # reserve at n_ctx 4096: 768 MiB + 512 tokens * f32 * (4096 * 4 heads + 100 vocab); 2 layers: the output layer
    # (12800 + 256) + block 3 (8192 + 256 + 8192) + its KV cache (4096 * (16 + 16) * 2 KV heads * f16)
    reserve = 768 * MIB + 512 * 4 * (4096 * 4 + VOCAB)
    two_layers = 12800 + 256 + 8192 + 256 + 8192 + 4096 * 32 * 2 * 2
    gpu = gpu_layers.GpuMemory("Small GPU", GIB, reserve + two_layers)
    one = {"MODELS_DIR": str(tmp_path), "PARALLEL": "1"}
    config = serve.resolve(one, gpu_offload=True, gpu=gpu)
    assert config.n_gpu_layers == 2
    assert config.notes[0].startswith("N_GPU_LAYERS=auto: 2 of 5 layers on the GPU (")
    one_less = gpu_layers.GpuMemory("Small GPU", GIB, reserve + two_layers - 1)
    assert serve.resolve(one, gpu_offload=True, gpu=one_less).n_gpu_layers == 1
    # four chats: block 3's KV cache is four times as big; the reserve (one chat's attention) is the same
    four_kv = gpu_layers.GpuMemory("Small GPU", GIB, reserve + two_layers + 3 * 4096 * 32 * 2 * 2)
    assert serve.resolve({**one, "PARALLEL": "4"}, gpu_offload=True, gpu=four_kv).n_gpu_layers == 2
    assert serve.resolve({**one, "PARALLEL": "4"}, gpu_offload=True, gpu=gpu).n_gpu_layers == 1


def test_auto_uses_n_ctx(tmp_path: Path) -> None:
    real_gguf(tmp_path / "m.gguf")
    reserve_8k = 768 * MIB + 512 * 4 * (8192 * 4 + VOCAB)
    two_layers_at_4k = 12800 + 256 + 8192 + 256 + 8192 + 4096 * 32 * 2 * 2
    gpu = gpu_layers.GpuMemory("Small GPU", GIB, reserve_8k + two_layers_at_4k)
    config = serve.resolve({"MODELS_DIR": str(tmp_path), "N_CTX": "8192", "PARALLEL": "1"}, gpu_offload=True,
                           gpu=gpu)
    assert config.n_gpu_layers == 1  # block 3's KV cache doubles at n_ctx 8192: it no longer fits
    assert "at n_ctx 8192" in config.notes[0]


def test_auto_with_a_model_it_cannot_size_is_a_config_error(tmp_path: Path) -> None:
    model = fake_gguf(tmp_path / "m.gguf")  # the magic and nothing else
    with pytest.raises(serve.ConfigError) as caught:
        serve.resolve({"MODELS_DIR": str(tmp_path)}, gpu_offload=True,
                      gpu=gpu_layers.GpuMemory("Test GPU", GIB, GIB))
    assert str(caught.value).startswith(f"{model}: ")
    assert "GGUF version 0 is not supported" in str(caught.value)


# --- error_body ---------------------------------------------------------------------------------------------

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000, "stream": True}


def test_any_other_error_is_a_500() -> None:
    assert serve.error_body(RuntimeError("boom")) == (500, {"error": {
        "message": "boom", "type": "internal_server_error", "param": None, "code": None}})
    assert serve.error_body(KeyError())[1]["error"]["message"] == "KeyError"


def test_llama_servers_context_error_becomes_openais() -> None:
    data = json.dumps({"error": {"code": 400, "message": "the request exceeds the available context size, try"
                                 " increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": 6021,
                                 "n_ctx": 4096}}).encode()
    converted = upstream.context_exceeded(data)
    assert converted is not None and json.loads(converted) == {"error": {
        "message": "This model's maximum context length is 4096 tokens. However, your messages resulted in 6021"
                   " tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
    other = json.dumps({"error": {"code": 400, "message": "x", "type": "invalid_request_error"}}).encode()
    assert upstream.context_exceeded(other) is None and upstream.context_exceeded(b"<html>") is None


# --- StreamErrors -------------------------------------------------------------------------------------------
# Fake ASGI apps (see the module docstring): the real server path is tests/integration/test_image.py's.

STREAM_START: Message = {"type": "http.response.start", "status": 200,
                         "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]}
PING: Message = {"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True}
END: Message = {"type": "http.response.body", "body": b"", "more_body": False}
DATA: Message = {"type": "http.response.body", "body": b'data: {"choices": []}\r\n\r\n', "more_body": True}
GONE = "llama-server closed the connection without an answer"


def scope(path: str = "/v1/chat/completions", method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": []}


class Client:
    """The server's side of one request: the request body in chunks, and every message sent back."""

    def __init__(self, *chunks: bytes) -> None:
        self.incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                         for i, c in enumerate(chunks)]
        self.sent: list[Message] = []
        self.disconnects = 0
        """Times receive was called after the body: the client's disconnect, once the response is sent."""

    async def receive(self) -> Message:
        if self.incoming:
            return self.incoming.pop(0)
        self.disconnects += 1
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def run(self, app: App, request_scope: dict[str, Any] | None = None) -> None:
        middleware = serve.StreamErrors(app)
        asyncio.run(middleware(request_scope or scope(), self.receive, self.send))


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def stream_body(**extra: Any) -> bytes:
    return json.dumps({**CHAT, **extra}).encode()


def error_response(client: Client) -> dict[str, Any]:
    """The JSON error the client got; asserts it got exactly a JSON start and one body."""
    start, body = client.sent  # nothing else: no 200 start, no ping
    assert start["type"] == "http.response.start"
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(body["body"])).encode()
    assert (body["type"], body["more_body"]) == ("http.response.body", False)
    return {"status": start["status"], **json.loads(body["body"])}


@pytest.mark.parametrize("request_scope", [scope(method="GET"), scope(path="/v1/models"),
                                           scope(path="/v1/embeddings"), {"type": "lifespan"}])
def test_other_requests_pass_through_untouched(request_scope: dict[str, Any]) -> None:
    client = Client(stream_body())
    seen: list[tuple[Any, Receive, Send]] = []
    start: Message = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}

    async def app(s: Any, receive: Receive, send: Send) -> None:
        seen.append((s, receive, send))
        await send(start)

    client.run(app, request_scope)
    (s, receive, send), = seen
    assert s is request_scope
    assert receive == client.receive and send == client.send  # the server's own callables: not even wrapped
    assert client.sent == [start] and client.sent[0] is start
    assert len(client.incoming) == 1  # the body was not read


@pytest.mark.parametrize("raw", [b'{"messages": [', b"", b"not json"])
def test_a_body_that_is_not_json_gets_a_400_in_openais_shape(raw: bytes) -> None:
    """llama_cpp.server answers such a body with a 500 and a traceback in its log."""
    client = Client(raw)

    async def app(s: Any, receive: Receive, send: Send) -> None:
        raise AssertionError("the app must not see a body that is not JSON")

    client.run(app)
    got = error_response(client)
    assert got["status"] == 400
    assert got["error"]["type"] == "invalid_request_error"
    assert got["error"]["message"].startswith("the request body is not JSON: ")
    assert ("it is empty" in got["error"]["message"]) == (raw == b"")


@pytest.mark.parametrize("raw", [stream_body(stream=False), stream_body(stream="true"), stream_body(stream=1),
                                 b"[1, 2]"])
def test_non_stream_bodies_reach_the_app_intact(raw: bytes) -> None:
    client = Client(raw)
    got: list[bytes] = []
    start: Message = {"type": "http.response.start", "status": 200,
                      "headers": [(b"content-type", b"application/json")]}
    end: Message = {"type": "http.response.body", "body": b"{}", "more_body": False}

    async def app(s: Any, receive: Receive, send: Send) -> None:
        got.append(await read_body(receive))
        assert send == client.send
        await send(start)
        await send(end)

    client.run(app)
    assert got == [raw]
    assert client.sent == [start, end] and client.sent[0] is start and client.sent[1] is end


def test_a_body_in_two_chunks_is_reassembled() -> None:
    whole = stream_body()
    client = Client(whole[:10], whole[10:])
    got: list[Message] = []

    async def app(s: Any, receive: Receive, send: Send) -> None:
        got.append(await receive())
        got.append(await receive())  # after the body: the server's receive again
        await send(STREAM_START)
        await send(DATA)
        await send(END)

    client.run(app)
    assert got == [{"type": "http.request", "body": whole, "more_body": False}, {"type": "http.disconnect"}]
    assert client.disconnects == 1  # the second receive reached the server's
    assert client.sent == [STREAM_START, DATA, END]


def test_a_non_stream_body_in_two_chunks_is_reassembled() -> None:
    whole = json.dumps({**CHAT, "stream": False}).encode()
    client = Client(whole[:7], whole[7:])
    got: list[bytes] = []

    async def app(s: Any, receive: Receive, send: Send) -> None:
        got.append(await read_body(receive))

    client.run(app)
    assert got == [whole]


@needs_exception_group
def test_an_error_before_the_first_event_becomes_a_json_500(capsys: pytest.CaptureFixture[str]) -> None:
    client = Client(stream_body())

    async def app(s: Any, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send(STREAM_START)
        raise ExceptionGroup("unhandled errors in a TaskGroup", [ValueError(GONE)])

    client.run(app)
    response = error_response(client)
    assert response["status"] == 500
    assert response["error"]["message"] == GONE
    assert f"llamawheel: stream refused with 500: {GONE}" in capsys.readouterr().err


@needs_exception_group
def test_an_error_after_the_stream_ended_empty_is_still_an_error() -> None:
    """sse_starlette's order: the start, the final empty body, and only then the task group's error."""
    client = Client(stream_body())

    async def app(s: Any, receive: Receive, send: Send) -> None:
        await send(STREAM_START)
        await send(PING)
        await send(END)
        raise ExceptionGroup("unhandled errors in a TaskGroup",
                             [ExceptionGroup("nested", [ValueError(GONE)])])

    client.run(app)
    response = error_response(client)
    assert (response["status"], response["error"]["message"]) == (500, GONE)


def test_a_plain_error_before_the_first_event_on_completions() -> None:
    client = Client(json.dumps({"prompt": "hi", "stream": True, "max_tokens": 16}).encode())

    async def app(s: Any, receive: Receive, send: Send) -> None:
        await send(STREAM_START)
        raise ValueError(GONE)

    client.run(app, scope(path="/v1/completions"))
    response = error_response(client)
    assert (response["status"], response["error"]["message"]) == (500, GONE)


def test_another_error_before_the_first_event_is_a_500() -> None:
    client = Client(stream_body())

    async def app(s: Any, receive: Receive, send: Send) -> None:
        await send(STREAM_START)
        raise RuntimeError("the model fell over")

    client.run(app)
    response = error_response(client)
    assert response == {"status": 500, "error": {"message": "the model fell over", "type": "internal_server_error",
                                                 "param": None, "code": None}}


def test_a_base_exception_is_never_turned_into_a_response() -> None:
    class Stop(BaseException):
        pass

    client = Client(stream_body())

    async def app(s: Any, receive: Receive, send: Send) -> None:
        await send(STREAM_START)
        raise Stop()

    with pytest.raises(Stop):
        client.run(app)
    assert client.sent == []


def test_pings_are_held_until_the_first_event() -> None:
    client = Client(stream_body())
    delivered: list[int] = []

    async def app(s: Any, receive: Receive, send: Send) -> None:
        for message in (STREAM_START, PING, DATA, END):
            await send(message)
            delivered.append(len(client.sent))

    client.run(app)
    assert delivered == [0, 0, 3, 4]  # nothing before the data; then everything in order, at once
    assert client.sent == [STREAM_START, PING, DATA, END]


def test_a_stream_that_ends_empty_without_an_error_is_sent_as_it_was() -> None:
    client = Client(stream_body())

    async def app(s: Any, receive: Receive, send: Send) -> None:
        await send(STREAM_START)
        await send(END)
        assert client.sent == []

    client.run(app)
    assert client.sent == [STREAM_START, END]


@pytest.mark.parametrize("status", [401, 500])
def test_a_json_answer_to_a_stream_request_passes_through_at_once(status: int) -> None:
    client = Client(stream_body())
    start: Message = {"type": "http.response.start", "status": status,
                      "headers": [(b"content-type", b"application/json")]}
    body: Message = {"type": "http.response.body", "body": b'{"detail": "Invalid API key"}', "more_body": False}
    delivered: list[int] = []

    async def app(s: Any, receive: Receive, send: Send) -> None:
        await send(start)
        delivered.append(len(client.sent))
        await send(body)
        delivered.append(len(client.sent))

    client.run(app)
    assert delivered == [1, 2]
    assert client.sent == [start, body]


@needs_exception_group
def test_an_error_after_the_first_event_is_raised() -> None:
    client = Client(stream_body())

    async def app(s: Any, receive: Receive, send: Send) -> None:
        await send(STREAM_START)
        await send(DATA)
        raise ExceptionGroup("unhandled errors in a TaskGroup", [ValueError(GONE)])

    with pytest.raises(ExceptionGroup) as caught:
        client.run(app)
    assert str(caught.value.exceptions[0]) == GONE
    assert client.sent == [STREAM_START, DATA]  # no 400 after the 200


def test_a_plain_error_after_the_first_event_is_raised() -> None:
    client = Client(stream_body())

    async def app(s: Any, receive: Receive, send: Send) -> None:
        await send(STREAM_START)
        await send(DATA)
        raise RuntimeError("mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        client.run(app)
    assert client.sent == [STREAM_START, DATA]


# --- the served id, threads, the queue ----------------------------------------------------------------------


@pytest.mark.parametrize(("file", "alias"), [
    ("llama-2-13b-chat.bin", "/models/llama-2-13b-chat.bin"),
    ("llama-2-70b-chat.bin", "/models/llama-2-70b-chat.bin"),
    ("code-llama-34b-chat.gguf", "/models/code-llama-34b-chat.gguf"),
    ("tiny/llama-2-13b-chat.bin", "/models/llama-2-7b-chat.bin"),  # not where the UI's id says
    ("my-model.gguf", "/models/llama-2-7b-chat.bin"),
])
def test_the_served_id_follows_the_file_when_the_ui_knows_it(tmp_path: Path, file: str, alias: str) -> None:
    """With /models/llama-2-13b-chat.bin mounted, the UI must label it 13B, not 7B."""
    fake_gguf(tmp_path / file)
    config = serve.resolve({"MODELS_DIR": str(tmp_path), "N_GPU_LAYERS": "0"}, gpu_offload=False)
    assert config.alias == alias
    assert not any("MODEL_ALIAS" in n for n in config.notes)


def test_model_alias_still_wins(tmp_path: Path) -> None:
    fake_gguf(tmp_path / "llama-2-13b-chat.bin")
    config = serve.resolve({"MODELS_DIR": str(tmp_path), "MODEL_ALIAS": "/models/llama-2-7b-chat.bin",
                            "N_GPU_LAYERS": "0"}, gpu_offload=False)
    assert config.alias == "/models/llama-2-7b-chat.bin"


def cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_line + "\n")
    return root, proc


@pytest.mark.parametrize(("proc_line", "files", "cpus", "threads", "said"), [
    # a container with --cpus 2: its own cgroup is the root of what it sees
    ("0::/", {"cpu.max": "200000 100000\n"}, 16, 2, "CPU quota of 2 CPU(s)"),
    ("0::/", {"cpu.max": "150000 100000\n"}, 16, 2, "CPU quota of 1.5 CPU(s)"),  # rounded up
    ("0::/", {"cpu.max": "max 100000\n"}, 16, 16, "no CPU quota"),
    ("0::/", {"cpu.max": "800000 100000\n"}, 4, 4, "CPU quota of 8 CPU(s) (4 CPU(s) visible)"),
    ("0::/system.slice/x.scope", {"system.slice/x.scope/cpu.max": "max 100000\n",  # a parent's quota binds
                                  "system.slice/cpu.max": "300000 100000\n"}, 16, 3, "CPU quota of 3 CPU(s)"),
    ("4:cpu,cpuacct:/docker/abc", {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",  # cgroup v1
                                   "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"}, 8, 1, "CPU quota of 1"),
    ("4:cpu,cpuacct:/", {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     8, 8, "no CPU quota"),
    ("0::/", {}, 6, 6, "no CPU quota"),  # no cgroup files at all
])
def test_threads_follow_the_cgroup_cpu_quota(tmp_path: Path, proc_line: str, files: dict[str, str], cpus: int,
                                             threads: int, said: str) -> None:
    root, proc = cgroup(tmp_path, proc_line, files)
    got, why = serve.default_threads(root, proc, cpus=cpus)
    assert (got, said in why) == (threads, True), why


def test_n_threads_overrides_and_is_checked(tmp_path: Path) -> None:
    fake_gguf(tmp_path / "m.gguf")
    base = {"MODELS_DIR": str(tmp_path), "N_GPU_LAYERS": "0"}
    assert serve.resolve({**base, "N_THREADS": "7"}, gpu_offload=False).n_threads == 7
    with pytest.raises(serve.ConfigError, match="N_THREADS=0: at least 1"):
        serve.resolve({**base, "N_THREADS": "0"}, gpu_offload=False)


def admission_run(admission: serve.Admission, client: Client) -> None:
    asyncio.run(admission(scope(), client.receive, client.send))


def test_past_the_queue_a_request_gets_503_with_retry_after_at_once() -> None:
    """Two requests are answered in their slots and two wait (PARALLEL=2, MAX_QUEUE=2): the fifth is refused
    without reaching the model, and counted."""
    reached: list[int] = []

    async def app(s: Any, receive: Receive, send: Send) -> None:
        reached.append(1)

    gauges = upstream.Gauges(slots=2, max_queue=2)
    admission = serve.Admission(app, gauges)
    gauges.in_flight = 4  # as while four requests are inside
    client = Client(stream_body())
    admission_run(admission, client)
    got = error_response_with(client, b"retry-after", b"10")
    assert got["status"] == 503 and got["error"]["code"] == "server_busy"
    assert "PARALLEL=2, MAX_QUEUE=2" in got["error"]["message"] and reached == []
    assert "2 answer(s) are being written and 2 request(s) wait" in got["error"]["message"]
    assert gauges.refused == 1 and "llamawheel_requests_refused_total 1\n" in gauges.prometheus()
    assert "llamawheel_requests_waiting 2\n" in gauges.prometheus()
    gauges.in_flight = 3  # one of them finished: there is room again
    admission_run(admission, Client(stream_body()))
    assert reached == [1] and gauges.in_flight == 3


def test_concurrent_requests_all_reach_the_app_and_are_counted_out() -> None:
    inside: list[int] = []

    async def app(s: Any, receive: Receive, send: Send) -> None:
        inside.append(gauges.in_flight)
        await asyncio.sleep(0.01)

    gauges = upstream.Gauges(slots=4, max_queue=8)
    admission = serve.Admission(app, gauges)

    async def many() -> None:
        await asyncio.gather(*(admission(scope(), Client(stream_body()).receive, Client().send) for _ in range(5)))

    asyncio.run(many())
    assert sorted(inside) == [1, 2, 3, 4, 5] and gauges.in_flight == 0


def test_other_paths_are_never_queued() -> None:
    gauges = upstream.Gauges(slots=1, max_queue=0)
    admission = serve.Admission(lambda s, r, se: asyncio.sleep(0), gauges)
    gauges.in_flight = 5
    client = Client()
    asyncio.run(admission(scope(path="/v1/models", method="GET"), client.receive, client.send))
    assert client.sent == []  # passed through: the app (sending nothing here) answered, not a 503


def error_response_with(client: Client, header: bytes, value: bytes) -> dict[str, Any]:
    start = client.sent[0]
    assert dict(start["headers"])[header] == value
    return error_response(client)
