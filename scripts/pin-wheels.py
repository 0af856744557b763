#!/usr/bin/env python3
"""Pin wheels by sha256, with this machine's own pip configuration (or a mirror profile).

Two uses:

1. Recipe ``packages`` entries (name, version, sha256) for NVIDIA wheels, for adding a CUDA minor to a recipe: it
   asks pip which file it would take for each ``name==version`` on Linux x86_64 and prints the sha256 pip's index
   publishes::

       python scripts/pin-wheels.py nvidia-cuda-nvcc==13.1.115 nvidia-cublas==13.2.1.1

2. ``--tools``: refresh ``recipes/pins/tools.toml``, the hash-pinned build requirements of the wheelhouse
   (scikit-build-core and what it needs, pip, CMake, ninja) and the pip the image runs at build time. The
   requirements are resolved for every Python and machine the file names (``--python`` / ``--arch`` change
   them), each file downloaded and hashed; a target the index cannot serve is reported and left out::

       python scripts/pin-wheels.py --tools
       python scripts/pin-wheels.py --tools --python 3.9,3.10,3.11,3.12,3.13,3.14 --arch x86_64,aarch64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DEFAULT_REQUIREMENTS = ("scikit-build-core[pyproject]>=0.9.2",)
"""llama-cpp-python's ``[build-system] requires`` (the recipes' pinned sdist); `wheelhouse.BUILD_TOOLS` is added."""
DEFAULT_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")
"""Debian 11's, 12's and 13's Python (the build roots) and every Python llamawheel itself runs on."""
DEFAULT_ARCHES = ("x86_64", "aarch64")
GLIBC = 28
"""Files for glibc 2.28 and older only: the wheelhouse serves every build root and this machine."""


def pin_recipe_packages(requirements: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
             "--only-binary=:all:", "--quiet", "--report", str(report), *requirements],
            check=True,
        )
        data = json.loads(report.read_text())
    for item in data["install"]:
        meta = item["metadata"]
        sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
        print(f'  {{ name = "{meta["name"]}", version = "{meta["version"]}", sha256 = "{sha}" }},')
    return 0


def _split(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())


def render_tool_pins(requirements: tuple[str, ...], pythons: tuple[str, ...], arches: tuple[str, ...],
                     releases: dict[tuple[str, str], tuple[str, dict[str, str]]]) -> str:
    """The text of ``tools.toml``: ``releases`` maps (name, version) to (Requires-Python, {file: sha256})."""
    q = json.dumps
    lines = [
        "# The hash-pinned build requirements of the wheelhouse (installed into the build root) and the pip the",
        "# image runs at build time. Generated: refresh with `python scripts/pin-wheels.py --tools`, do not edit.",
        "# Each [[wheels]] is one release; its files are every wheel of it pip took for the Pythons and machines",
        "# below (pip download --require-hashes checks each against its sha256).",
        f"requirements = [{', '.join(q(r) for r in requirements)}]",
        f"pythons = [{', '.join(q(p) for p in pythons)}]",
        f"arches = [{', '.join(q(a) for a in arches)}]",
    ]
    for (name, version), (requires_python, files) in sorted(releases.items()):
        lines += ["", "[[wheels]]", f"name = {q(name)}", f"version = {q(version)}"]
        if requires_python:
            lines.append(f"requires-python = {q(requires_python)}")
        lines.append("files = [")
        lines += [f"  {{ file = {q(f)}, sha256 = {q(h)} }}," for f, h in sorted(files.items())]
        lines.append("]")
    return "\n".join(lines) + "\n"


def pin_tools(args: argparse.Namespace) -> int:
    from llamawheel.core.errors import LlamawheelError
    from llamawheel.mirror import profiles
    from llamawheel.pipeline import wheelhouse
    from llamawheel.wheel import distmeta
    from llamawheel.wheel.requirements import fetch_settled, platforms_for

    out = args.out or wheelhouse.pins_path()
    previous = wheelhouse.load_pins(out) if out.is_file() else None
    requirements = _split(args.requirement) or (previous.requirements if previous else
                                                (*DEFAULT_REQUIREMENTS, *wheelhouse.BUILD_TOOLS))
    pythons = _split(args.python) or (previous.pythons if previous else DEFAULT_PYTHONS)
    arches = _split(args.arch) or (previous.arches if previous else DEFAULT_ARCHES)
    mirror = profiles.load_profile(args.mirror)
    releases: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
    done: list[str] = []
    missed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in arches:
            for python in pythons:
                folder = Path(tmp) / f"{arch}-{python}"
                try:
                    fetched = fetch_settled(
                        list(requirements), list(requirements), (), folder, mirror, python_version=python,
                        platforms=platforms_for([f"manylinux_2_{GLIBC}_{arch}"]), arch=arch,
                        what="the build tools", tip="", unsettled_tip="")
                except LlamawheelError as exc:
                    print(f"pin-wheels: Python {python} on {arch}: not pinned ({exc.message.splitlines()[0]})",
                          file=sys.stderr)
                    missed.append(f"{python}/{arch}")
                    continue
                for f in fetched:
                    meta = distmeta.read(f.path)
                    key = (meta.project, meta.version)
                    entry = releases.setdefault(key, (meta.requires_python or "", {}))
                    entry[1][f.path.name] = f.sha256
                done.append(f"{python}/{arch}")
    if not releases:
        print("pin-wheels: nothing could be resolved; the file is left as it was", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_tool_pins(requirements, pythons, arches, releases))
    print(f"wrote {out}: {len(releases)} release(s) for {', '.join(done)}"
          + (f"; not served by the index: {', '.join(missed)}" if missed else ""))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("requirements", nargs="*", help="name==version of NVIDIA wheels to print recipe entries for")
    parser.add_argument("--tools", action="store_true", help="refresh recipes/pins/tools.toml instead")
    parser.add_argument("--requirement", action="append", help="with --tools: what to resolve (default: as before)")
    parser.add_argument("--python", action="append", help="with --tools: Python versions (3.11 or 3.11,3.12)")
    parser.add_argument("--arch", action="append", help="with --tools: machines (x86_64, aarch64)")
    parser.add_argument("--mirror", help="with --tools: mirror profile (default: pip's own configuration)")
    parser.add_argument("--out", type=Path, help="with --tools: write here instead of recipes/pins/tools.toml")
    args = parser.parse_args(argv)
    if args.tools:
        return pin_tools(args)
    if not args.requirements:
        parser.error("name==version requirements, or --tools")
    return pin_recipe_packages(args.requirements)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
