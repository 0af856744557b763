#!/usr/bin/env python3
"""sccache against ccache, cold, warm from the local store and warm from a remote store alone, for the CUDA 13.0
sm_90 wheel and the CPU wheel; then whether sccache reuses per-architecture steps (``--arch 86,90`` after 86 and
90 were built).

Every build runs from a fresh clone of this checkout (``git clone``), as a user's would:

- cold: a new, empty ``LLAMAWHEEL_CACHE`` (so the toolchain and build root are fetched too) and an empty remote;
- warm-local: the same cache folder again, a new clone;
- warm-remote: another new, empty cache folder (a second machine), only the remote store warm.

The remote store is a real Redis (Debian's ``redis-server``, started here on loopback, one database per tool).
Numbers come from each wheel's manifest (compile-step seconds, hits, remote hits) and the wall clock; a JSON
line per build is appended to ``WORK/results.jsonl`` and the table is printed at the end (``--table`` prints it
again from that file).

    python scripts/bench-compile-cache.py --work /tmp/bench                  # everything (about 2.5 hours here)
    python scripts/bench-compile-cache.py --work /tmp/bench --only cu130 --tools sccache
    python scripts/bench-compile-cache.py --work /tmp/bench --only archs
    python scripts/bench-compile-cache.py --work /tmp/bench --table
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"cu130": ["13.0", "--arch", "90"], "cpu": ["cpu"]}
TOOLS = ("sccache", "ccache")
DB = {"sccache": 1, "ccache": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    redis = shutil.which("redis-server")
    if redis is None:
        sys.exit("redis-server is not installed: apt-get install redis-server")
    port = free_port()
    proc = subprocess.Popen([redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(work)], stdout=subprocess.DEVNULL)
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0:
            return proc, port
        time.sleep(0.1)
    sys.exit("redis-server did not answer")


def flush(port: int, db: int) -> None:
    subprocess.run(["redis-cli", "-p", str(port), "-n", str(db), "flushdb"], check=True, capture_output=True)


def remote_bytes(port: int) -> int:
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True, text=True).stdout
    return next((int(line.split(":")[1]) for line in out.splitlines() if line.startswith("used_memory:")), 0)


def build(work: Path, name: str, cache: Path, tool: str, target: list[str], port: int) -> dict[str, object]:
    """One build from a new clone; returns its numbers."""
    clone = work / "clones" / name
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    out = work / "out" / name
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "LLAMAWHEEL_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "llamawheel", "build", *target, "--out", str(out), "--compile-cache", tool,
           "--compile-cache-url", f"redis://127.0.0.1:{port}/{DB[tool]}"]
    log = work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"== {name}: {' '.join(cmd[3:])} (log {log})", flush=True)
    start = time.monotonic()
    with log.open("w") as fh:
        done = subprocess.run(cmd, cwd=clone, env={**env, "PYTHONPATH": str(clone / "src")}, stdout=fh,
                              stderr=subprocess.STDOUT)
    wall = time.monotonic() - start
    shutil.rmtree(clone, ignore_errors=True)
    if done.returncode != 0:
        sys.exit(f"{name} failed ({done.returncode}); see {log}")
    (manifest_path,) = out.glob("*.whl.json")
    data = json.loads(manifest_path.read_text())
    cc = data["build"]["compile_cache"]
    return {"name": name, "tool": tool, "wall_s": round(wall, 1), "compile_s": data["durations_seconds"]["compile"],
            "hits": cc.get("hits", 0), "misses": cc.get("misses", 0), "remote_hits": cc.get("remote_hits", 0),
            "remote_bytes": remote_bytes(port)}


def record(work: Path, row: dict[str, object]) -> None:
    with (work / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"   {row}", flush=True)


def three(work: Path, tool: str, target: str, port: int) -> None:
    """cold, warm-local, warm-remote for one tool and target."""
    a = work / "caches" / f"{tool}-{target}-A"
    shutil.rmtree(a, ignore_errors=True)
    flush(port, DB[tool])
    record(work, build(work, f"{target}-{tool}-cold", a, tool, TARGETS[target], port))
    record(work, build(work, f"{target}-{tool}-warm-local", a, tool, TARGETS[target], port))
    b = work / "caches" / f"{tool}-{target}-B"
    shutil.rmtree(b, ignore_errors=True)
    record(work, build(work, f"{target}-{tool}-warm-remote", b, tool, TARGETS[target], port))
    shutil.rmtree(b, ignore_errors=True)


def archs(work: Path, port: int) -> None:
    """sccache: --arch 86 into the cache that built 90, then --arch 86,90."""
    a = work / "caches" / "sccache-cu130-A"
    if not a.is_dir():
        sys.exit("run --only cu130 --tools sccache first (its cache holds the sm_90 build)")
    record(work, build(work, "cu130-sccache-arch86", a, "sccache", ["13.0", "--arch", "86"], port))
    record(work, build(work, "cu130-sccache-arch86,90", a, "sccache", ["13.0", "--arch", "86,90"], port))


def table(work: Path) -> None:
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines() if line.strip()]
    print(f"\n{'build':<30} {'wall':>8} {'compile':>8} {'hits':>13} {'from remote':>12}")
    for r in rows:
        total = r["hits"] + r["misses"]
        rate = f"{r['hits']}/{total} {100 * r['hits'] // max(total, 1)}%"
        print(f"{r['name']:<30} {r['wall_s'] / 60:>7.1f}m {r['compile_s'] / 60:>7.1f}m {rate:>13} "
              f"{r['remote_hits']:>12}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="a folder for clones, caches, wheels and results")
    ap.add_argument("--only", choices=("cu130", "cpu", "archs"), action="append",
                    help="only these parts (repeatable; default: cu130, cpu, archs)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="sccache,ccache")
    ap.add_argument("--table", action="store_true", help="print the table of the results so far and stop")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.table:
        table(args.work)
        return
    redis, port = start_redis(args.work)
    try:
        parts = args.only or ["cu130", "cpu", "archs"]
        for target in ("cu130", "cpu"):
            if target in parts:
                for tool in args.tools.split(","):
                    three(args.work, tool, target, port)
        if "archs" in parts:
            archs(args.work, port)
    finally:
        redis.terminate()
    table(args.work)


if __name__ == "__main__":
    main()
