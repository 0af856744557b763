"""The ``publish`` and ``index {check,bundle,serve,upload}`` commands: argument parsing and output only;
the work is done in `index`, `index_check`, `share` and `closure`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from llamawheel.core import log, paths
from llamawheel.core.errors import UsageError


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``publish`` and ``index`` to the top-level subcommands."""
    p = sub.add_parser("publish", help="add wheels and everything they need to the private index (wheels/<variant>/)")
    p.add_argument("wheels", nargs="+", type=Path, metavar="WHEEL", help="a wheel to publish (llama-cpp-python, and "
                   "llama.cpp's server beside it)")
    p.add_argument("--index", type=Path, help="index folder (default: wheels/)")
    p.add_argument("--mirror", help="mirror profile the dependencies come through (default: pip's own configuration)")
    p.add_argument("--force", action="store_true", help="replace a published file of the same name but other bytes")
    p.add_argument("--refresh-lock", action="store_true",
                   help="resolve the dependencies anew instead of taking the files the variant's lock names")
    p.add_argument("--no-closure", dest="closure", action="store_false",
                   help="publish only the given wheels, without fetching their dependencies")
    p.add_argument("--python-version", action="append", metavar="X.Y",
                   help="fetch dependencies for this Python (repeatable, or 3.11,3.12; default: the recipe's list)")

    i = sub.add_parser("index", help="check, bundle, serve or upload the private index")
    isub = i.add_subparsers(dest="index_command", required=True)
    c = isub.add_parser("check", help="verify every hash, link and metadata file; list orphans")
    c.add_argument("dir", nargs="?", type=Path, metavar="DIR", help="index folder (default: wheels/)")
    b = isub.add_parser("bundle", help="write the index as one .tar.gz with a .sha256 beside it")
    b.add_argument("--index", type=Path, help="index folder (default: wheels/)")
    b.add_argument("--out", type=Path, help="archive path (default: <index>/llamawheel-index.tar.gz)")
    b.add_argument("--image-archive", type=Path, action="append", default=[], metavar="FILE",
                   help="also carry this API image archive (llamawheel image --save FILE); repeat for several")
    b.add_argument("--ui-archive", type=Path, metavar="FILE",
                   help="also carry llama-gpt's UI image as an archive (docker save / podman save of "
                        "ghcr.io/getumbrel/llama-gpt-ui:1.0.1), for a site no registry serves")
    s = isub.add_parser("serve", help="serve the index over HTTP")
    s.add_argument("--index", type=Path, help="index folder (default: wheels/)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    u = isub.add_parser("upload", help="upload wheels to an existing index server with twine")
    u.add_argument("wheels", nargs="+", type=Path, metavar="WHEEL", help="a wheel to upload")
    u.add_argument("--repository-url", required=True, help="the server's upload URL (no credentials in it)")
    u.add_argument("--skip-existing", action="store_true", help="skip files the server already has")


def _python_versions(values: list[str] | None) -> list[str]:
    versions = [v.strip() for item in values or [] for v in item.split(",") if v.strip()]
    for v in versions:
        if not re.fullmatch(r"3\.\d+", v):
            raise UsageError(f"--python-version {v}: not a Python version like 3.12")
    return versions


def _bundle(args: argparse.Namespace) -> None:
    from llamawheel.image import bundle

    root = args.index or paths.wheels_dir()
    done = bundle.write_bundle(root, args.out or root / "llamawheel-index.tar.gz", args.image_archive,
                               args.ui_archive)
    print(f"wrote {done.archive} ({log.human_size(done.archive.stat().st_size)}) and {done.archive.name}.sha256 "
          f"(sha256 {done.sha256})")
    print("on the offline machine, in the folder you copied both files to (also in OFFLINE.txt inside):")
    for command in done.commands:
        print(f"    {command}")


def _cmd_publish(args: argparse.Namespace) -> int:
    from llamawheel.mirror import profiles
    from llamawheel.publish import index

    results = index.publish(
        args.wheels,
        index_root=args.index,
        mirror=profiles.load_profile(args.mirror),
        force=args.force,
        with_closure=args.closure,
        python_versions=_python_versions(args.python_version) or None,
        refresh_lock=args.refresh_lock,
    )
    for r in results:
        print(
            f"{r.variant}: {len(r.added)} added, {len(r.replaced)} replaced, {len(r.unchanged)} already there;"
            f" {len(r.state.files)} wheels in {r.index_url}"
        )
        for command in r.commands:
            print(f"    {command}")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from llamawheel.publish import index_check, share

    if args.index_command == "check":
        report = index_check.check(args.dir or paths.wheels_dir())
        print(report.render())
        report.raise_if_failed()
    elif args.index_command == "bundle":
        _bundle(args)
    elif args.index_command == "serve":
        root = args.index or paths.wheels_dir()

        def ready(url: str) -> None:
            print(f"serving {root} at {url}/ (Ctrl-C stops)", flush=True)
            for command in share.serve_commands(root, url):
                print(f"    {command}", flush=True)

        share.serve(root, args.host, args.port, on_ready=ready)
    else:
        share.upload(args.wheels, args.repository_url, args.skip_existing)
    return 0


COMMANDS = {
    "publish": _cmd_publish,
    "index": _cmd_index,
}
