#!/usr/bin/env python3
"""CPU prompt and decode speed of llama-cpp-python builds, side by side, on a ~134M-parameter model.

Each build is an interpreter with a wheel installed (a virtual environment's python), optionally with
environment settings (``LLAMA_CPP_CPU_VARIANT=skylakex`` forces one of the all-variants wheel's levels).
For each weight type a model is written once with ``llamawheel tiny-model`` (12 layers, 768 wide, 32000
tokens), then each build evaluates a 256-token prompt and decodes 128 tokens, three times (``--runs``); the
best run counts. llama.cpp's own counters (llama_perf_context) give the times, so Python's overhead is left out.

    python scripts/bench-cpu.py today=/tmp/old/bin/python all-variants=/tmp/new/bin/python \\
        'avx512=/tmp/new/bin/python LLAMA_CPP_CPU_VARIANT=skylakex'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SHAPE = ["--layers", "12", "--dim", "768", "--ff", "2048", "--heads", "12", "--kv-heads", "12", "--ctx", "1024"]
PROMPT_TOKENS = 256
DECODE_TOKENS = 128
RUNS = 3


def child(model: str, threads: int, runs: int) -> None:
    """Runs inside the interpreter being measured; prints one JSON line."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                          verbose=False, seed=1)
    variant = getattr(getattr(llama_cpp, "_backends", None), "CPU_VARIANT", None) or "(one fixed level)"
    prompt = list(range(1000, 1000 + PROMPT_TOKENS))
    best_prompt = best_decode = 0.0
    for _ in range(runs):
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm.ctx)
        llm.eval(prompt)
        for _ in range(DECODE_TOKENS):
            llm.eval([int(llm.sample(temp=0.0))])
        perf = llama_cpp.llama_perf_context(llm.ctx)
        best_prompt = max(best_prompt, perf.n_p_eval / (perf.t_p_eval_ms / 1000))
        best_decode = max(best_decode, perf.n_eval / (perf.t_eval_ms / 1000))
    print(json.dumps({"variant": variant, "prompt": best_prompt, "decode": best_decode}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("builds", nargs="+", metavar="'LABEL=PYTHON [VAR=VALUE ...]'")
    p.add_argument("--models", type=Path, default=Path("/tmp/llamawheel-bench"), help="where the models go")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--types", default="q8_0,f16")
    p.add_argument("--runs", type=int, default=RUNS, help=f"runs per build, the best counts (default {RUNS})")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.runs)
        return 0
    args.models.mkdir(parents=True, exist_ok=True)
    print(f"{'weights':<8} {'build':<14} {'CPU code':<16} {'prompt tok/s':>12} {'decode tok/s':>12}")
    for weight_type in args.types.split(","):
        model = args.models / f"bench-134m-{weight_type}.gguf"
        if not model.is_file():
            made = subprocess.run([sys.executable, "-m", "llamawheel", "tiny-model", str(model), "--type", weight_type,
                                   *SHAPE], capture_output=True, text=True)
            if made.returncode:
                print(made.stderr, file=sys.stderr)
                return 1
        for spec in args.builds:
            label, _, rest = spec.partition("=")
            python, *settings = rest.split()
            env = {**os.environ, **dict(s.split("=", 1) for s in settings)}
            out = subprocess.run([python, __file__, "--child", str(model), str(args.threads), "--runs",
                                  str(args.runs), "x"],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                print(f"{label}: failed ({out.returncode})\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{weight_type:<8} {label:<14} {r['variant']:<16} {r['prompt']:>12.1f} {r['decode']:>12.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
