"""Run by the interpreter that has a llama-cpp-python wheel installed (a root's venv, a build's): the tiny model's
logits after a fixed prompt, on one thread of the x86-64 baseline CPU module (``LLAMA_CPP_CPU_VARIANT=x64``, the same
code on every machine), printed as JSON. The test compares them with ``tests/data/tiny-logits.json``, measured the
same way from the manylinux_2_31 wheel built before the glibc 2.28 binding (``python tests/logits.py MODEL``)."""

import json
import os
import sys

os.environ["LLAMA_CPP_CPU_VARIANT"] = "x64"

import llama_cpp

PROMPT = "Once upon a time, in a small village by the sea,"
EVERY = 500  # one logit in 500 of the 32000, besides the best ones


def measure(model: str) -> dict:
    llm = llama_cpp.Llama(model_path=model, n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False, seed=3)
    tokens = llm.tokenize(PROMPT.encode())
    llm.eval(tokens)
    last = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    row = [float(last[i]) for i in range(llm.n_vocab())]
    best = sorted(range(len(row)), key=lambda i: -row[i])[:8]
    greedy = [int(llm.sample(temp=0.0))]
    for _ in range(7):
        llm.eval([greedy[-1]])
        greedy.append(int(llm.sample(temp=0.0)))
    return {"variant": getattr(llama_cpp._backends, "CPU_VARIANT", None), "tokens": len(tokens),
            "best": [[i, row[i]] for i in best], "sampled": {str(i): row[i] for i in range(0, len(row), EVERY)},
            "greedy": greedy}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))
