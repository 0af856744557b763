#!/usr/bin/env python3
"""How far down a wheel could go: for each manylinux glibc from the wheel's own tag down to 2.17 (manylinux2014),
what its libraries use that a system of that glibc lacks, split into what a build for that glibc would bind to an
older version (``--glibc``: an older version of the symbol exists in the build root's glibc) and what stops it (a
function that glibc does not have, one whose old version has another ABI, or a C++ runtime symbol).

    python scripts/glibc-floor.py wheels/llama_cpp_python-0.3.36+cu124.sm86-*.whl [--root PATH]

``--root`` is the build root whose glibc the wheel was built in (default: llamawheel's bullseye root).
"""

from __future__ import annotations

import argparse
import posixpath
import sys
from pathlib import Path

from llamawheel.building import glibc
from llamawheel.core import paths
from llamawheel.core.errors import UsageError
from llamawheel.toolchain import buildroot
from llamawheel.wheel import policy
from llamawheel.wheel.distmeta import WheelName
from llamawheel.wheel.elf import is_elf, read_elf
from llamawheel.wheel.wheelfile import read_entries


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wheel", type=Path)
    p.add_argument("--root", type=Path, default=paths.toolchains_dir() / "buildroot-bullseye")
    args = p.parse_args()
    libs = {posixpath.basename(e.name): read_elf(e.data) for e in read_entries(args.wheel) if is_elf(e.data)}
    claimed = policy.tag_glibc(WheelName.parse(args.wheel.name).platform)
    tag = claimed if claimed and claimed != (0, 0) else policy.policies()[-1].glibc  # linux_*: from the newest
    libdir = args.root / "lib" / "x86_64-linux-gnu"
    env_glibc = glibc.parse_version(buildroot.Root.from_marker(args.root).glibc)
    print(f"{args.wheel.name}: {len(libs)} libraries, tagged for glibc {glibc.dotted(tag)}")
    floor = tag
    for rule in reversed([p for p in policy.policies() if glibc.OLDEST <= p.glibc <= tag]):
        candidate = rule.glibc
        try:
            binding = glibc.binding(candidate, libdir, env_glibc)
        except UsageError as exc:
            print(f"  glibc {glibc.dotted(candidate):<5} {exc.message}")
            break
        bindable: set[str] = set()
        linked: set[str] = set()
        stops: set[str] = set()
        for e in policy.excess(rule, libs):
            if e.version.startswith(("GLIBCXX_", "CXXABI_")):  # a build for an older glibc links libstdc++ in
                linked.add(e.version)
            elif e.version.startswith("GLIBC_") and e.symbol in binding.bound:
                bindable.add(f"{e.symbol}@{e.version} -> {binding.bound[e.symbol]}")
            else:
                stops.add(f"{e.library}: {e.symbol}@{e.version}")
        line = f"  glibc {glibc.dotted(candidate):<5} "
        if stops:
            shown = ", ".join(sorted(stops)[:6]) + (f", ... ({len(stops)} in all)" if len(stops) > 6 else "")
            print(line + f"stopped by {shown}")
            break
        floor = candidate
        how = ([f"binding {', '.join(sorted(bindable))}"] if bindable else []) + (
            [f"linking libstdc++ in (needs {', '.join(sorted(linked))})"] if linked else [])
        print(line + (f"reachable, {'; '.join(how)}" if how else "reachable as built"))
    print(f"oldest reachable: glibc {glibc.dotted(floor)} (manylinux_{floor[0]}_{floor[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
