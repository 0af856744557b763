"""The ``llamawheel`` command. `main` never reads ``sys.argv`` itself; errors are
printed once, here, as ``ERROR ...`` and ``TIP ...`` with their own exit codes.

Each module of this package adds its commands (``add_parsers``) and says which function runs each
(``COMMANDS``): `build` (build, toolchain, toolchains, farm), `verify` (verify-static, verify, tiny-model),
`publish` (publish, index), `image` (image) and `data` (recipes, mirrors, ci-matrix).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from llamawheel import __version__
from llamawheel.cli import build, data, image, publish, verify
from llamawheel.core import log, paths
from llamawheel.core.errors import LlamawheelError
from llamawheel.core.redact import redact

_MODULES = (build, verify, publish, image, data)
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    name: command for module in _MODULES for name, command in module.COMMANDS.items()
}


def parser() -> argparse.ArgumentParser:
    """The whole command line (``docs/reference.md`` lists its commands and options, generated from it)."""
    top = argparse.ArgumentParser(prog="llamawheel", description="Build verified CUDA wheels of llama-cpp-python.")
    top.add_argument("--version", action="version", version=f"llamawheel {__version__}")
    top.add_argument("--traceback", action="store_true", help="show a traceback on errors")
    top.add_argument("--root", type=Path, metavar="PATH",
                     help="use the recipes/, mirrors/ and docker/ of this llamawheel checkout, and its wheels/ "
                          "as the default output (default: $LLAMAWHEEL_ROOT, else the ones shipped with "
                          "llamawheel and ./wheels)")
    sub = top.add_subparsers(dest="command", required=True)
    for module in _MODULES:
        module.add_parsers(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        paths.set_root(args.root)
        paths.root()  # a root that is no llamawheel checkout is refused before the command starts
        return COMMANDS[args.command](args)
    except LlamawheelError as exc:
        if args.traceback:
            traceback.print_exc()
        print(f"ERROR {redact(exc.message)}", file=sys.stderr)
        if exc.tip:
            print(f"TIP {redact(exc.tip)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        log.warn("interrupted: nothing half-written was left in place")
        return 130


def entry() -> None:
    sys.exit(main(sys.argv[1:]))
