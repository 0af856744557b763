"""The ``recipes``, ``mirrors`` and ``ci-matrix`` commands: what the data files say (argument parsing and
output only; the work is done in `llamawheel.recipe` and `llamawheel.mirror`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from llamawheel.building import options
from llamawheel.core.errors import MirrorError
from llamawheel.core.redact import redact
from llamawheel.mirror import probe, profiles
from llamawheel.recipe import catalog, platforms
from llamawheel.recipe.matrix import matrix


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mirrors``, ``recipes`` and ``ci-matrix`` to the top-level subcommands."""
    m = sub.add_parser("mirrors", help="list or probe mirror profiles")
    msub = m.add_subparsers(dest="mirrors_command", required=True)
    msub.add_parser("list", help="show the profiles and their URLs")
    c = msub.add_parser("check", help="fetch what the pipeline needs through a profile (default: every profile) and "
                                      "say which features it can serve")
    c.add_argument("name", nargs="?", help="profile name or path")
    c.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    c.add_argument("-v", "--verbose", action="store_true", help="list every URL fetched, not only the failures")
    c.add_argument("--strict", action="store_true",
                   help="fail unless every feature is served (default: fail only when the CPU wheels cannot be built)")

    r = sub.add_parser("recipes", help="list recipes and the CUDA versions they build")
    r.add_argument("--schema", action="store_true", help="print the JSON schema of a recipe file instead")

    cm = sub.add_parser("ci-matrix", help="print the CI build matrix (CUDA minor x architectures x variant) as JSON")
    cm.add_argument("--arch-set", action="append", dest="arch_sets", metavar="ARCH",
                    help="an --arch value per wheel variant (repeat; default: the recipe's list)")
    cm.add_argument("--line", action="append", dest="lines", metavar="LINE", help="only these lines (11, 12, 13, cpu)")
    cm.add_argument("--runtime", action="append", dest="runtimes", choices=options.RUNTIME_MODES,
                    help="runtime modes to build (default: pypi)")
    cm.add_argument("--platform", action="append", dest="platforms", choices=list(platforms.PLATFORMS),
                    help="platforms to build for (default: all; aarch64 is cross-compiled on x86-64 runners)")


def _cmd_mirrors(args: argparse.Namespace) -> int:
    if args.mirrors_command == "list":
        for name in profiles.available():
            profile = profiles.load_profile(name)
            print(f"{name}: {profile.description}")
            urls = {k: v for k, v in profile.urls().items() if v}
            for key, url in urls.items():
                print(f"    {key:<16} {redact(url)}")
            if not urls:
                print("    (changes nothing: pip and apt keep this machine's configuration)")
        return 0
    from llamawheel.image import mirror_needs

    names = [args.name] if args.name else list(profiles.available())
    features = mirror_needs.features()
    failed: list[str] = []
    for name in names:
        profile = profiles.load_profile(name)
        print(f"{profile.name}: what the pipeline fetches")
        report = probe.check(profile, features, args.timeout)
        by_upstream: dict[str, list[probe.Probe]] = {}
        for p in sorted(report.probes, key=lambda p: (p.need.upstream, p.need.path, p.need.label)):
            by_upstream.setdefault(p.need.upstream, []).append(p)
        for upstream, probes in by_upstream.items():
            shown = probes if args.verbose else [p for p in probes if not p.ok]
            good = [p for p in probes if p.ok]
            if good and not args.verbose:
                slowest = max(good, key=lambda p: p.seconds)
                print(f"    ok   {upstream:<15} {len(good)} of {len(probes)} answered as needed, slowest"
                      f" {slowest.seconds * 1000:.0f} ms ({slowest.url})")
            details = {p.detail for p in probes}
            if not good and len(probes) > 1 and len(details) == 1 and not args.verbose:  # one cause: one line
                print(f"    FAIL {upstream:<15} all {len(probes)}: {details.pop()} ({probes[0].url})")
                continue
            for p in shown:
                status = "ok  " if p.ok else "FAIL"
                print(f"    {status} {upstream:<15} {p.need.label}: {p.detail}, {p.seconds * 1000:.0f} ms ({p.url})")
        if report.file_hosts:
            print(f"    the PyPI index sends pip to {', '.join(sorted(report.file_hosts))} for files")
        print(f"{profile.name}: what it can serve")
        width = max(len(s.feature.name) for s in report.served)
        for served in report.served:
            verdict = "yes" if served.ok else f"no  ({served.why})"
            print(f"    {served.feature.name:<{width}}  {verdict}")
        if not report.core_ok or (args.strict and not all(s.ok for s in report.served)):
            failed.append(profile.name)
    if failed:
        raise MirrorError(
            f"{', '.join(failed)}: " + ("cannot serve every feature (--strict)" if args.strict else
                                        "cannot serve even the CPU wheels (see the FAIL lines above)"),
            "choose a profile whose URLs answer, with --mirror NAME, or put the missing mirror in your own profile",
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
    entries = matrix(catalog.all_recipes(), args.arch_sets, args.lines, tuple(args.runtimes or ["pypi"]),
                     tuple(args.platforms or platforms.PLATFORMS))
    print(json.dumps(entries))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "mirrors": _cmd_mirrors,
    "recipes": _cmd_recipes,
    "ci-matrix": _cmd_ci_matrix,
}
