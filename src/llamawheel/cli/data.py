"""The ``recipes``, ``mirrors`` and ``ci-matrix`` commands: what the data files say (argument parsing and
output only; the work is done in `llamawheel.recipe` and `llamawheel.mirror`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from llamawheel.build import options
from llamawheel.core.errors import MirrorError
from llamawheel.mirror import probe, profiles
from llamawheel.recipe import catalog
from llamawheel.recipe.matrix import matrix


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mirrors``, ``recipes`` and ``ci-matrix`` to the top-level subcommands."""
    m = sub.add_parser("mirrors", help="list or probe mirror profiles")
    msub = m.add_subparsers(dest="mirrors_command", required=True)
    msub.add_parser("list", help="show the profiles and their URLs")
    c = msub.add_parser("check", help="probe each URL of a profile (default: every profile)")
    c.add_argument("name", nargs="?", help="profile name or path")
    c.add_argument("--timeout", type=float, default=5.0, help="seconds per probe (default 5)")

    r = sub.add_parser("recipes", help="list recipes and the CUDA versions they build")
    r.add_argument("--schema", action="store_true", help="print the JSON schema of a recipe file instead")

    cm = sub.add_parser("ci-matrix", help="print the CI build matrix (CUDA minor x architectures x variant) as JSON")
    cm.add_argument("--arch-set", action="append", dest="arch_sets", metavar="ARCH",
                    help="an --arch value per wheel variant (repeat; default: the recipe's list)")
    cm.add_argument("--line", action="append", dest="lines", metavar="LINE", help="only these lines (11, 12, 13, cpu)")
    cm.add_argument("--runtime", action="append", dest="runtimes", choices=options.RUNTIME_MODES,
                    help="runtime modes to build (default: pypi)")


def _cmd_mirrors(args: argparse.Namespace) -> int:
    if args.mirrors_command == "list":
        for name in profiles.available():
            profile = profiles.load_profile(name)
            print(f"{name}: {profile.description}")
            urls = {k: v for k, v in profile.urls().items() if v}
            for key, url in urls.items():
                print(f"    {key:<16} {url}")
            if not urls:
                print("    (changes nothing: pip, uv and apt keep this machine's configuration)")
        return 0
    names = [args.name] if args.name else list(profiles.available())
    failures = 0
    for name in names:
        profile = profiles.load_profile(name)
        print(f"{profile.name}:")
        probes = probe.check(profile, args.timeout)
        if not probes:
            print("    nothing to probe (pip and apt have no URLs configured)")
        for p in probes:
            status = "ok  " if p.ok else "FAIL"
            print(f"    {status} {p.upstream:<18} {p.seconds * 1000:7.0f} ms  {p.detail:<14} {p.url}")
            failures += not p.ok
    if failures:
        raise MirrorError(
            f"{failures} mirror URL(s) did not answer (see the FAIL lines above)",
            "choose a profile whose URLs answer, with --mirror NAME",
        )
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    if args.schema:
        print(json.dumps(catalog.schema(), indent=2))
        return 0
    for recipe in catalog.all_recipes().values():
        if recipe.kind == "cpu":
            print(f"{recipe.name}: {recipe.description}")
            continue
        minors = ", ".join(
            f"{v}{' (default)' if v == recipe.default_minor else ''} [{m.provider}]" for v, m in recipe.minors.items()
        )
        print(f"{recipe.name}: {recipe.description}\n    {minors}")
    return 0


def _cmd_ci_matrix(args: argparse.Namespace) -> int:
    entries = matrix(catalog.all_recipes(), args.arch_sets, args.lines, tuple(args.runtimes or ["pypi"]))
    print(json.dumps(entries))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "mirrors": _cmd_mirrors,
    "recipes": _cmd_recipes,
    "ci-matrix": _cmd_ci_matrix,
}
