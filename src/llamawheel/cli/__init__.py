"""The ``llamawheel`` command. `main` never reads ``sys.argv`` itself; errors are
printed once, here, as ``ERROR ...`` and ``TIP ...`` with their own exit codes."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from llamawheel import __version__
from llamawheel.build import options
from llamawheel.cli import image as image_cli
from llamawheel.cli import publish as index_cli
from llamawheel.cli import verify as verify_cli
from llamawheel.core import log
from llamawheel.core.errors import LlamawheelError, MirrorError, UsageError, did_you_mean
from llamawheel.mirror import profiles
from llamawheel.recipe import catalog


def _add_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mirror", help="mirror profile name (default, aliyun, tsinghua, ustc) or path to a .toml")
    p.add_argument("--arch", help="GPU architectures: 86,89 / 90+ptx / a preset / native / default")
    p.add_argument("--jobs", type=int, help="parallel compile jobs (default: bounded by cores and memory)")
    p.add_argument("--llama-cpp-python", dest="llama_cpp_python", metavar="VERSION",
                   help="llama-cpp-python version (default: the recipe's pin)")
    p.add_argument("--sdist-sha256", help="sha256 of that version's sdist (needed when not the recipe's pin)")
    p.add_argument("--out", type=Path, help="output folder (default: wheels/)")
    p.add_argument("--source", type=Path, help="build this local source tree instead of the pinned sdist")
    p.add_argument("--toolchain", help="toolchain provider: auto, pypi, deb, system")
    p.add_argument("--runtime", help="pypi (depend on NVIDIA's runtime wheels, default) or system")
    p.add_argument("--no-verify", dest="verify", action="store_false", default=None,
                   help="skip static verification after the build")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamawheel", description="Build verified CUDA wheels of llama-cpp-python.")
    parser.add_argument("--version", action="version", version=f"llamawheel {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show a traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build, repair and verify a wheel")
    b.add_argument("target", help="a CUDA line (13), a CUDA minor (13.0) or cpu")
    _add_build_options(b)

    v = sub.add_parser("verify-static", help="check what a wheel really holds, without a GPU")
    v.add_argument("wheel", type=Path)
    v.add_argument("--cuda", help="expected CUDA version (default: read from the wheel's +cuXY label)")
    v.add_argument("--arch", help="expected architectures (default: read from the label)")
    v.add_argument("--runtime", choices=options.RUNTIME_MODES, help="expected runtime mode")
    v.add_argument("--json", action="store_true", help="print the report as JSON")

    m = sub.add_parser("mirrors", help="list or probe mirror profiles")
    msub = m.add_subparsers(dest="mirrors_command", required=True)
    msub.add_parser("list", help="show the profiles and their URLs")
    c = msub.add_parser("check", help="probe each URL of a profile (default: every profile)")
    c.add_argument("name", nargs="?", help="profile name or path")
    c.add_argument("--timeout", type=float, default=5.0, help="seconds per probe (default 5)")

    sub.add_parser("recipes", help="list recipes and the CUDA versions they build")

    cm = sub.add_parser("ci-matrix", help="print the CI build matrix (CUDA minor x architectures x variant) as JSON")
    cm.add_argument("--arch-set", action="append", dest="arch_sets", metavar="ARCH",
                    help="an --arch value per wheel variant (repeat; default: the recipe's list)")
    cm.add_argument("--line", action="append", dest="lines", metavar="LINE", help="only these lines (11, 12, 13, cpu)")
    cm.add_argument("--runtime", action="append", dest="runtimes", choices=options.RUNTIME_MODES,
                    help="runtime modes to build (default: pypi)")

    tl = sub.add_parser("toolchains", help="list cached CUDA toolchains (size, origin); --clean removes them")
    tl.add_argument("--clean", nargs="?", const="all", metavar="NAME",
                    help="remove one cached toolchain (e.g. cuda-12.4-deb), or all of them")

    t = sub.add_parser("toolchain", help="provision (or reuse) the CUDA toolchain for a version")
    t.add_argument("version", help="a CUDA line (13) or minor (13.0)")
    t.add_argument("--mirror")
    t.add_argument("--toolchain", default="auto")

    index_cli.add_parsers(sub)
    verify_cli.add_parsers(sub)
    image_cli.add_parsers(sub)
    return parser


def _cmd_build(args: argparse.Namespace) -> int:
    from llamawheel import pipeline
    from llamawheel.build import planning

    opts = options.resolve({
        "mirror": args.mirror, "arch": args.arch, "jobs": args.jobs, "llama_cpp_python": args.llama_cpp_python,
        "sdist_sha256": args.sdist_sha256, "out": args.out, "source": args.source, "toolchain": args.toolchain,
        "runtime": args.runtime, "verify": args.verify,
    })
    if args.target == "cpu":
        plan = planning.plan_cpu(catalog.cpu_recipe(), opts)
    else:
        recipe, minor = catalog.find_cuda(args.target.removeprefix("cuda-"))
        plan = planning.plan_cuda(recipe, minor, opts)
    wheel = pipeline.run(plan)
    print(wheel)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from llamawheel.verify import static as verify_static
    from llamawheel.wheel.distmeta import WheelName

    if not args.wheel.is_file():
        raise UsageError(f"{args.wheel}: no such wheel file")
    expect = verify_static.Expectations.from_claim(
        WheelName.parse(args.wheel.name).version, cuda=args.cuda, arch=args.arch, runtime=args.runtime
    )
    report = verify_static.verify_wheel(args.wheel, expect)
    print(report.to_json() if args.json else report.render())
    report.raise_if_failed()
    return 0


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
        probes = profiles.check(profile, args.timeout)
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


def _cmd_recipes(_: argparse.Namespace) -> int:
    for recipe in catalog.all_recipes().values():
        if recipe.kind == "cpu":
            print(f"{recipe.name}: {recipe.description}")
            continue
        minors = ", ".join(
            f"{v}{' (default)' if v == recipe.default_minor else ''} [{m.provider}]" for v, m in recipe.minors.items()
        )
        print(f"{recipe.name}: {recipe.description}\n    {minors}")
    return 0


def _cmd_toolchain(args: argparse.Namespace) -> int:
    from llamawheel.toolchain import provider_for

    _, minor = catalog.find_cuda(args.version)
    root = provider_for(minor, args.toolchain).provision(minor, profiles.load_profile(args.mirror))
    print(root.path)
    return 0


def _cmd_ci_matrix(args: argparse.Namespace) -> int:
    import json

    from llamawheel.recipe.matrix import matrix

    entries = matrix(catalog.all_recipes(), args.arch_sets, args.lines, tuple(args.runtimes or ["pypi"]))
    print(json.dumps(entries))
    return 0


def _cmd_toolchains(args: argparse.Namespace) -> int:
    import shutil

    from llamawheel.core import paths
    from llamawheel.toolchain import cached_roots

    folder = paths.toolchains_dir()
    roots = cached_roots(folder)
    if args.clean:
        chosen = roots if args.clean == "all" else [r for r in roots if r.path.name == args.clean]
        if not chosen and args.clean != "all":
            names = [r.path.name for r in roots]
            raise UsageError(f"no cached toolchain named {args.clean}{did_you_mean(args.clean, names)}",
                             f"cached: {', '.join(names) or 'none'}")
        for root in chosen:
            shutil.rmtree(root.path)
            print(f"removed {root.path} ({log.human_size(root.size_bytes)})")
        return 0
    if not roots:
        print(f"no toolchains cached in {folder}")
        return 0
    print(f"{'name':<18} {'CUDA':<18} {'on disk':>9} {'download':>9}  origin")
    for r in roots:
        print(f"{r.path.name:<18} {r.nvcc_version:<18} {log.human_size(r.size_bytes):>9} "
              f"{log.human_size(r.download_bytes):>9}  {r.origin}")
    print(f"in {folder}")
    return 0


COMMANDS = {
    "ci-matrix": _cmd_ci_matrix,
    "toolchains": _cmd_toolchains,
    "build": _cmd_build,
    "verify-static": _cmd_verify,
    "mirrors": _cmd_mirrors,
    "recipes": _cmd_recipes,
    "toolchain": _cmd_toolchain,
    **index_cli.COMMANDS,
    **image_cli.COMMANDS,
    **verify_cli.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LlamawheelError as exc:
        if args.traceback:
            traceback.print_exc()
        print(f"ERROR {exc.message}", file=sys.stderr)
        if exc.tip:
            print(f"TIP {exc.tip}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        log.warn("interrupted: nothing half-written was left in place")
        return 130


def entry() -> None:
    sys.exit(main(sys.argv[1:]))
