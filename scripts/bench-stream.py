#!/usr/bin/env python3
"""Streamed against unstreamed generation speed, and whether the streamed text is the same.

Each interpreter given (a virtual environment with a llama-cpp-python wheel installed) generates
N tokens greedily (end-of-text suppressed, so every run makes exactly N) through
``create_chat_completion``, once unstreamed and once streamed, as the llama-gpt UI asks. Prints
tokens/s for both, their ratio, and whether the streamed chunks join to the unstreamed text byte for
byte.

    python scripts/bench-stream.py --model tiny.gguf before=/tmp/upstream/bin/python after=.venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def child(model: str, counts: list[int]) -> None:
    """Runs inside the interpreter being measured; prints one JSON line per token count."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=2048, n_threads=2, verbose=False, seed=1)
    eos = llm.token_eos()
    messages = [{"role": "user", "content": "Tell me a long story about a lighthouse."}]
    common = dict(messages=messages, temperature=0.0, logit_bias={str(eos): -1e9}, seed=1)
    llm.create_chat_completion(max_tokens=16, **common)  # warm up
    for n in counts:
        start = time.perf_counter()
        whole = llm.create_chat_completion(max_tokens=n, **common)
        plain_s = time.perf_counter() - start
        plain_text = whole["choices"][0]["message"]["content"]
        tokens = whole["usage"]["completion_tokens"]
        start = time.perf_counter()
        chunks = []
        first = None
        for chunk in llm.create_chat_completion(max_tokens=n, stream=True, **common):
            piece = chunk["choices"][0]["delta"].get("content")
            if piece:
                first = first or time.perf_counter()
                chunks.append(piece)
        stream_s = time.perf_counter() - start
        streamed = "".join(chunks)
        print(json.dumps({
            "n": n, "tokens": tokens, "plain_s": plain_s, "stream_s": stream_s, "chunks": len(chunks),
            "same": streamed.encode() == plain_text.encode(), "chars": len(plain_text),
        }), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a GGUF model (llamawheel tiny-model writes one)")
    p.add_argument("--tokens", default="100,300,1000", help="token counts (default 100,300,1000)")
    p.add_argument("builds", nargs="+", metavar="LABEL=PYTHON", help="an interpreter with the wheel installed")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    counts = [int(n) for n in args.tokens.split(",")]
    if args.child:
        child(str(args.model), counts)
        return 0
    print(f"{'build':<10} {'tokens':>6} {'unstreamed tok/s':>17} {'streamed tok/s':>15} {'ratio':>6}"
          f" {'chunks':>6}  same text")
    for spec in args.builds:
        label, _, python = spec.partition("=")
        cmd = [python, __file__, "--child", "--model", str(args.model.resolve()), "--tokens", args.tokens, "x"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{label}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            return 1
        for line in out.stdout.splitlines():
            r = json.loads(line)
            plain, stream = r["tokens"] / r["plain_s"], r["tokens"] / r["stream_s"]
            print(f"{label:<10} {r['tokens']:>6} {plain:>17.1f} {stream:>15.1f} {stream / plain:>6.2f}"
                  f" {r['chunks']:>6}  {'yes' if r['same'] else 'NO'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
