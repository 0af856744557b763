#!/usr/bin/env python3
"""Serving several chats at once: the image's server before and after parallel slots, and llama.cpp's own server.

Three servers, one after another, on the same model, threads and machine, each started as the image starts it
(its entry point, on loopback, outside a container):

- ``before``: the image's front of the last release that served with llama-cpp-python's own server
  (``--before REV``, its ``src/llamawheel/runtime`` taken from git), one answer at a time;
- ``after``: this checkout's front with llama.cpp's server behind it (``PARALLEL`` slots);
- ``llama-server``: llama.cpp's own server from the same wheel, alone, with the same slots and threads.

For 1, 2, 4 and 8 streamed chats sent at once (different prompts, ``--tokens`` each, end-of-text suppressed) it
prints the aggregate tokens/s, the time to first token (median and worst) and how long ``/v1/models`` took while
they streamed. The model is a 134M-parameter q8_0 llama with random weights (12 layers, 768 wide, 12 heads,
feed-forward 2048), written on the spot with ``llamawheel tiny-model``.

    python scripts/bench-serve.py --python /tmp/bench/bin/python

``--python`` is an interpreter with the CPU wheel, ``llamawheel-server``, ``uvicorn`` and llama-cpp-python's server
extra installed (``pip install llama_cpp_python-*.whl llamawheel_server-*.whl 'uvicorn' fastapi sse-starlette
starlette-context pydantic-settings pyyaml``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-" + "0" * 24
ALIAS = "/models/llama-2-7b-chat.bin"
EOS = "2"  # the llama vocabulary's end of text
TOPICS = ("a lighthouse", "the sea", "a mountain", "a city at night", "a library", "a garden", "a train", "winter")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runtime_at(rev: str, dest: Path) -> Path:
    """``src/llamawheel/runtime`` of ``rev``, as the package the image holds (``llamawheel_runtime``)."""
    package = dest / "llamawheel_runtime"
    package.mkdir(parents=True)
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", rev, "src/llamawheel/runtime/"],
                           capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        data = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{name}"], capture_output=True, check=True)
        (package / Path(name).name).write_bytes(data.stdout)
    return dest


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    key: str | None = KEY
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=lambda: Path(tempfile.mkstemp(suffix=".log")[1]))

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env={**os.environ, **self.env}, stdout=self.log.open("wb"),
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"{self.name} stopped:\n{self.log.read_text()[-3000:]}")
            try:
                if get(self, "/v1/models", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        sys.exit(f"{self.name} did not answer in 300 s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def get(server: Server, path: str, timeout: float = 30) -> tuple[int, float]:
    """(status, seconds) of a GET."""
    headers = {"Authorization": f"Bearer {server.key}"} if server.key else {}
    started = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers),
                                timeout=timeout) as response:
        response.read()
        return response.status, time.perf_counter() - started


@dataclass
class Stream:
    started: float
    first: float | None = None
    ended: float = 0.0
    tokens: int = 0


def chat(server: Server, prompt: str, tokens: int, out: Stream) -> None:
    body = {"model": ALIAS, "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                         {"role": "user", "content": prompt}],
            "max_tokens": tokens, "temperature": 0.7, "seed": 7, "stream": True, "logit_bias": {EOS: -100}}
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {server.key}"} if server.key else {})
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/v1/chat/completions",
                                     json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                out.tokens += 1
                if out.first is None:
                    out.first = time.perf_counter()
    out.ended = time.perf_counter()


def round_of(server: Server, n: int, tokens: int) -> dict[str, float]:
    streams = [Stream(time.perf_counter()) for _ in range(n)]
    threads = [threading.Thread(target=chat, args=(server, f"Tell me about {TOPICS[i % len(TOPICS)]} (#{i}).",
                                                   tokens, streams[i])) for i in range(n)]
    latencies: list[float] = []
    done = threading.Event()

    def poll_models() -> None:
        time.sleep(0.5)
        while not done.is_set():
            latencies.append(get(server, "/v1/models", timeout=120)[1])
            time.sleep(0.25)

    poller = threading.Thread(target=poll_models)
    start = time.perf_counter()
    for s, t in zip(streams, threads, strict=True):
        s.started = time.perf_counter()
        t.start()
    poller.start()
    for t in threads:
        t.join()
    done.set()
    poller.join()
    wall = max(s.ended for s in streams) - start
    ttft = [(s.first or s.ended) - s.started for s in streams]
    return {"tokens_s": sum(s.tokens for s in streams) / wall, "ttft_median": statistics.median(ttft),
            "ttft_worst": max(ttft), "models_median": statistics.median(latencies) if latencies else float("nan"),
            "models_worst": max(latencies) if latencies else float("nan"),
            "tokens": sum(s.tokens for s in streams) / n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", required=True, help="an interpreter with the wheels installed (see above)")
    parser.add_argument("--model", type=Path, help="the model (default: the 134M one, made in a temporary folder)")
    parser.add_argument("--before", default="502ab08", help="the git revision whose image served with "
                        "llama-cpp-python's own server (default: 502ab08, the last one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", default="1,2,4,8")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each size per server (the median is shown)")
    parser.add_argument("--only", help="comma-separated: before, after, llama-server (default: all three)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = args.model
    if model is None:
        model = work / "models" / "llama-2-7b-chat.bin"
        model.parent.mkdir()
        made = subprocess.run([sys.executable, "-m", "llamawheel", "tiny-model", str(model), "--type", "q8_0",
                               "--layers", "12", "--dim", "768", "--heads", "12", "--kv-heads", "12", "--ff", "2048",
                               "--ctx", "4096"], capture_output=True, text=True)
        if made.returncode != 0:
            sys.exit(made.stderr)
        print(made.stdout.strip() or made.stderr.strip().splitlines()[-1])
    threads = str(args.threads)
    front = {"HOST": "127.0.0.1", "MODEL": str(model.resolve()), "MODEL_ALIAS": ALIAS, "API_KEY": KEY,
             "N_THREADS": threads, "N_CTX": "4096", "MODEL_CACHE": str(work / "cache")}
    servers = []
    port = free_port()
    servers.append(Server("before", [args.python, "-m", "llamawheel_runtime.serve"],
                          {**front, "PORT": str(port), "PYTHONPATH": str(runtime_at(args.before, work / "before"))},
                          port))
    after = work / "after"
    after.mkdir()
    (after / "llamawheel_runtime").symlink_to(ROOT / "src" / "llamawheel" / "runtime")
    port = free_port()
    servers.append(Server("after", [args.python, "-m", "llamawheel_runtime.serve"],
                          {**front, "PORT": str(port), "PARALLEL": str(args.parallel), "PYTHONPATH": str(after)},
                          port))
    port = free_port()
    servers.append(Server("llama-server", [args.python, "-m", "llamawheel_server", "-m", str(model.resolve()),
                                           "--alias", ALIAS, "--host", "127.0.0.1", "--port", str(port),
                                           "-np", str(args.parallel), "-c", str(4096 * args.parallel), "-t", threads,
                                           "-tb", threads, "--chat-template", "llama2", "--no-jinja", "--no-webui"],
                          {"LLAMAWHEEL_QUIET": "1"}, port, key=None))
    wanted = set((args.only or "before,after,llama-server").split(","))
    rounds = [int(n) for n in args.rounds.split(",")]
    chosen = [server for server in servers if server.name in wanted]
    print(f"model {model} ({model.stat().st_size / 1e6:.0f} MB), {threads} threads, {args.parallel} slots, "
          f"{args.tokens} tokens a chat, on {os.cpu_count()} CPUs; each figure the median of {args.repeat} rounds, "
          "the servers taking turns (all started, one busy at a time)")
    results: dict[str, dict[int, dict[str, float]]] = {server.name: {} for server in chosen}
    try:
        for server in chosen:
            server.start()
            round_of(server, 1, 16)  # warm up
        for n in rounds:
            runs: dict[str, list[dict[str, float]]] = {server.name: [] for server in chosen}
            for _ in range(args.repeat):
                for server in chosen:
                    runs[server.name].append(round_of(server, n, args.tokens))
            for server in chosen:
                r = results[server.name][n] = {key: statistics.median(run[key] for run in runs[server.name])
                                               for key in runs[server.name][0]}
                r["models_worst"] = max(run["models_worst"] for run in runs[server.name])
                print(f"{server.name:>12} {n} chat(s): {r['tokens_s']:7.1f} tokens/s in all, first token "
                      f"{r['ttft_median']:.2f} s median / {r['ttft_worst']:.2f} s worst, /v1/models "
                      f"{r['models_median'] * 1000:.0f} ms median / {r['models_worst'] * 1000:.0f} ms worst "
                      f"({r['tokens']:.0f} tokens a chat)", flush=True)
    finally:
        for server in chosen:
            server.stop()
    print("\n| server | chats | tokens/s in all | first token, median | first token, worst | /v1/models, worst |")
    print("|---|---|---|---|---|---|")
    for name, by_n in results.items():
        for n, r in by_n.items():
            print(f"| {name} | {n} | {r['tokens_s']:.1f} | {r['ttft_median']:.2f} s | {r['ttft_worst']:.2f} s | "
                  f"{r['models_worst'] * 1000:.0f} ms |")
    if "llama-server" in results:
        anchor = results["llama-server"]
        for name in ("before", "after"):
            if name in results:
                ratios = ", ".join(f"{n}: {results[name][n]['tokens_s'] / anchor[n]['tokens_s']:.2f}x"
                                   for n in rounds if n in anchor)
                print(f"{name} against llama.cpp's own server, aggregate tokens/s: {ratios}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
