"""The conversion cache shared by several servers: one result when two convert at once, a new converter or a
cut file converts again, and a stop signal during the conversion leaves nothing behind.

llama.cpp's real converter comes from the pinned sdist (network: see tests/integration/test_wheel_runtime.py),
so these tests run a STAND-IN for it: a script of the same name and arguments that writes a small real GGUF
file with the gguf package, and that can be made slow (to overlap two conversions) or made to hang halfway
(to be stopped). Everything else is real: ensure_gguf starts it as a subprocess, and the servers are separate
processes, PID 1 in their own PID namespace (as in a container) where ``unshare`` allows it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamawheel.runtime import convert, gpu_layers

from .test_convert import ggml_file

STAND_IN = '''"""A STAND-IN for llama.cpp's convert_llama_ggml_to_gguf.py (tests only): same arguments, a small GGUF."""
import argparse, os, sys, time
import gguf, numpy as np
p = argparse.ArgumentParser()
for flag in ("--input", "--output", "--context-length", "--eps", "--gqa"):
    p.add_argument(flag)
args = p.parse_args()
with open(os.environ["STAND_IN_RUNS"], "a") as log:
    log.write(f"{os.getpid()}\\n")
if os.environ.get("STAND_IN_HANG"):  # write part of a file, then never finish
    with open(args.output, "wb") as out:
        out.write(b"GGUF" + bytes(4096))
    with open(os.environ["STAND_IN_HANG"], "w") as pid:  # as the machine's /proc numbers it
        pid.write(os.readlink("/proc/self"))
    print("writing", flush=True)
    time.sleep(600)
time.sleep(float(os.environ.get("STAND_IN_DELAY", "0")))
w = gguf.GGUFWriter(args.output, "llama")
w.add_block_count(1)
w.add_context_length(int(args.context_length))
w.add_tensor("token_embd.weight", np.zeros((32, 64), dtype=np.float16))
w.add_tensor("blk.0.attn_q.weight", np.ones((64, 64), dtype=np.float16))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("done", flush=True)
'''

SERVER = '''import sys
from pathlib import Path
from llamawheel.runtime import convert
with convert.stop_on_signals():
    final = convert.ensure_gguf(Path(sys.argv[1]), Path(sys.argv[2]), converter_dir=Path(sys.argv[3]),
                                need_volume=False, say=lambda line: print(line, file=sys.stderr, flush=True))
print(final)
'''
"""A server's start, as far as the conversion: stop signals handled, the model converted into the cache."""


def _can_be_pid_1() -> bool:
    unshare = shutil.which("unshare")
    return unshare is not None and subprocess.run([unshare, "--pid", "--fork", "true"],
                                                  capture_output=True).returncode == 0


PID_1 = _can_be_pid_1()
AS_PID_1 = pytest.param(True, id="pid1", marks=pytest.mark.skipif(
    not PID_1, reason="unshare --pid is not allowed here (needs root or user namespaces)"))
AS_PROCESS = pytest.param(False, id="process")


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "converter"
    folder.mkdir()
    (folder / convert.CONVERTER_SCRIPT).write_text(STAND_IN)
    monkeypatch.setenv("STAND_IN_RUNS", str(tmp_path / "runs.log"))
    return folder


def _runs(tmp_path: Path) -> int:
    """How many times the stand-in converter has started."""
    log = tmp_path / "runs.log"
    return len(log.read_text().split()) if log.exists() else 0


def _start_server(model: Path, cache: Path, converter: Path, pid_1: bool) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", SERVER, str(model), str(cache), str(converter)]
    if pid_1:
        cmd = ["unshare", "--pid", "--fork", *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _python_pid(proc: subprocess.Popen[str], pid_1: bool) -> int:
    """The server's Python process: under unshare, the child it forked (PID 1 inside its namespace)."""
    if not pid_1:
        return proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = children.read_text().split()
        if found:
            return int(found[0])
        time.sleep(0.05)
    raise AssertionError("unshare started no child")


def _in_cache(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir())


@pytest.mark.parametrize("pid_1", [AS_PROCESS, AS_PID_1])
def test_two_servers_converting_one_model_into_one_cache_make_one_valid_file(
        tmp_path: Path, stand_in: Path, monkeypatch: pytest.MonkeyPatch, pid_1: bool) -> None:
    """Two containers sharing /cache start at once (both PID 1): the converter runs once, the other server
    waits for its result, and both serve the same complete file."""
    model = ggml_file(tmp_path / "llama-2-7b-chat.bin")
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("STAND_IN_DELAY", "2")
    servers = [_start_server(model, cache, stand_in, pid_1) for _ in range(2)]
    results = [server.communicate(timeout=60) for server in servers]
    for server, (_, err) in zip(servers, results, strict=True):
        assert server.returncode == 0, err
    paths = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(paths) == 1
    final = Path(paths.pop())
    assert _in_cache(cache) == [final.name]  # no partial file, no second result
    assert convert.check_gguf(final) is None
    assert gpu_layers.read_layout(final).block_count == 1
    assert _runs(tmp_path) == 1
    logs = "".join(err for _, err in results)
    assert "waiting for its result" in logs and "made by another server while this one waited" in logs


def test_a_conversion_cached_under_the_old_name_is_redone(tmp_path: Path, stand_in: Path) -> None:
    """Before the converter's key was in the name, the cache file was <model>.<model key>.gguf: whatever
    converter made it, it is not used."""
    model = ggml_file(tmp_path / "llama-2-7b-chat.bin")
    cache = tmp_path / "cache"
    cache.mkdir()
    old = cache / f"{model.stem}.{convert.model_key(model)}.gguf"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(convert.ensure_gguf(model, elsewhere, converter_dir=stand_in, need_volume=False, say=lambda _: None),
                old)  # a valid GGUF of this model, as an older image cached it
    said: list[str] = []
    final = convert.ensure_gguf(model, cache, converter_dir=stand_in, need_volume=False, say=said.append)
    assert final != old and final.parent == cache and convert.check_gguf(final) is None
    assert _runs(tmp_path) == 2
    assert any(f"{old} is a conversion of {model} by another converter" in line for line in said)


def test_a_conversion_by_another_converter_is_redone(tmp_path: Path, stand_in: Path) -> None:
    """A new image ships a changed converter (llama.cpp's or llamawheel's patch to it): the next start
    converts again instead of serving what the old one made."""
    model = ggml_file(tmp_path / "llama-2-7b-chat.bin")
    cache = tmp_path / "cache"
    cache.mkdir()
    first = convert.ensure_gguf(model, cache, converter_dir=stand_in, need_volume=False, say=lambda _: None)
    again: list[str] = []
    assert convert.ensure_gguf(model, cache, converter_dir=stand_in, need_volume=False, say=again.append) == first
    assert "made on an earlier start" in again[0] and _runs(tmp_path) == 1
    script = stand_in / convert.CONVERTER_SCRIPT
    script.write_text(script.read_text() + "# patched\n")
    said: list[str] = []
    second = convert.ensure_gguf(model, cache, converter_dir=stand_in, need_volume=False, say=said.append)
    assert second != first and convert.check_gguf(second) is None
    assert _runs(tmp_path) == 2
    assert any("converting it once to GGUF" in line for line in said)


def test_the_converter_key_covers_its_gguf_package(tmp_path: Path, stand_in: Path) -> None:
    (stand_in / "gguf").mkdir()
    (stand_in / "gguf" / "constants.py").write_text("A = 1\n")
    before = convert.converter_key(stand_in)
    (stand_in / "gguf" / "constants.py").write_text("A = 2\n")
    assert convert.converter_key(stand_in) != before


@pytest.mark.parametrize("damage", ["cut", "header-only"])
def test_a_truncated_cached_conversion_is_not_reused(tmp_path: Path, stand_in: Path, damage: str) -> None:
    """A cached file cut short (a full disk, a copy interrupted) is removed and converted again, and the log
    says why."""
    model = ggml_file(tmp_path / "llama-2-7b-chat.bin")
    cache = tmp_path / "cache"
    cache.mkdir()
    final = convert.ensure_gguf(model, cache, converter_dir=stand_in, need_volume=False, say=lambda _: None)
    whole = final.read_bytes()
    final.write_bytes(whole[:-100] if damage == "cut" else whole[:24])
    said: list[str] = []
    assert convert.ensure_gguf(model, cache, converter_dir=stand_in, need_volume=False, say=said.append) == final
    assert final.read_bytes() == whole and _runs(tmp_path) == 2
    assert any(f"the cached conversion {final} is not usable" in line and "truncated" in line for line in said)


def test_a_partial_file_left_by_a_killed_server_is_removed(tmp_path: Path, stand_in: Path) -> None:
    model = ggml_file(tmp_path / "llama-2-7b-chat.bin")
    cache = tmp_path / "cache"
    cache.mkdir()
    left = cache / f".{convert.converted_name(model, stand_in)}.partial-1"  # what a SIGKILL leaves
    left.write_bytes(b"GGUF" + bytes(100))
    final = convert.ensure_gguf(model, cache, converter_dir=stand_in, need_volume=False, say=lambda _: None)
    assert _in_cache(cache) == [final.name]


def test_a_converter_that_writes_no_valid_gguf_leaves_no_result(tmp_path: Path, stand_in: Path) -> None:
    model = ggml_file(tmp_path / "llama-2-7b-chat.bin")
    cache = tmp_path / "cache"
    cache.mkdir()
    (stand_in / convert.CONVERTER_SCRIPT).write_text(
        "import sys\nopen(sys.argv[sys.argv.index('--output') + 1], 'wb').write(b'GGUF' + bytes(8))\n")
    with pytest.raises(convert.ConversionError, match="wrote no usable GGUF file"):
        convert.ensure_gguf(model, cache, converter_dir=stand_in, need_volume=False, say=lambda _: None)
    assert _in_cache(cache) == []


@pytest.mark.parametrize("pid_1", [AS_PROCESS, AS_PID_1])
def test_sigterm_during_the_conversion_stops_it_and_leaves_no_partial_file(
        tmp_path: Path, stand_in: Path, monkeypatch: pytest.MonkeyPatch, pid_1: bool) -> None:
    """``docker stop`` sends SIGTERM to the server, PID 1 in its container, while it converts: it stops at once
    (not after docker's timeout), kills the converter, removes its partial file and exits non-zero."""
    model = ggml_file(tmp_path / "llama-2-7b-chat.bin")
    cache = tmp_path / "cache"
    cache.mkdir()
    converter_pid = tmp_path / "converter.pid"
    monkeypatch.setenv("STAND_IN_HANG", str(converter_pid))
    server = _start_server(model, cache, stand_in, pid_1)
    python = _python_pid(server, pid_1)
    try:
        deadline = time.monotonic() + 30
        while not converter_pid.exists() or not converter_pid.read_text():
            assert server.poll() is None and time.monotonic() < deadline, server.communicate()
            time.sleep(0.05)
        assert any(".partial-" in name for name in _in_cache(cache))  # the conversion is under way
        os.kill(python, signal.SIGTERM)
        _, err = server.communicate(timeout=15)
    finally:
        if server.poll() is None:  # it did not stop: end it and its converter, which hold its pipes
            converter = converter_pid.read_text() if converter_pid.exists() else ""
            for pid in (python, *([int(converter)] if converter else [])):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            server.kill()
            server.communicate()
    assert server.returncode == 128 + signal.SIGTERM, err
    assert f"stopped by SIGTERM while converting {model}" in err and "partial file removed" in err
    assert _in_cache(cache) == []
    assert not Path(f"/proc/{converter_pid.read_text()}").exists()  # the converter is gone too



LOADING = '''import ctypes, sys
from llamawheel.runtime import convert
with convert.stop_on_signals():
    print("loading", flush=True)
    while True:  # llama.cpp loading a model: inside a C call (ctypes lets go of the GIL), for a long time
        ctypes.CDLL(None).sleep(60)
'''


@pytest.mark.parametrize("pid_1", [AS_PROCESS, AS_PID_1])
def test_sigterm_while_the_model_loads_stops_the_server(pid_1: bool) -> None:
    cmd = [sys.executable, "-c", LOADING]
    server = subprocess.Popen(["unshare", "--pid", "--fork", *cmd] if pid_1 else cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    python = _python_pid(server, pid_1)
    try:
        assert server.stdout is not None and server.stdout.readline() == "loading\n"
        time.sleep(0.2)  # inside the C call
        os.kill(python, signal.SIGTERM)
        _, err = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(python, signal.SIGKILL)
            server.kill()
            server.communicate()
    assert server.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM while the server was starting" in err


def test_leaving_stop_on_signals_puts_back_the_handlers_it_found() -> None:
    """uvicorn installs its own handlers after the start: nothing of ours may be left to act on them."""
    before = {sig: signal.getsignal(sig) for sig in convert.STOP_SIGNALS}
    with convert.stop_on_signals():
        assert all(signal.getsignal(sig) is not before[sig] for sig in convert.STOP_SIGNALS)
    assert {sig: signal.getsignal(sig) for sig in convert.STOP_SIGNALS} == before
    assert signal.set_wakeup_fd(-1) == -1
