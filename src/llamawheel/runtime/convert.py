"""llama-gpt's own models are GGML v3 (``ggjt``) files, which llama.cpp no longer reads: convert one once to
GGUF, into a writable cache folder, with llama.cpp's own converter (``convert_llama_ggml_to_gguf.py`` from the
pinned sdist, shipped in the image beside its ``gguf`` package).

The converter's defaults are Llama 1's; llama-gpt's files are Llama 2 chat models, so the conversion sets
Llama 2's context length (4096) and RMS-norm epsilon (1e-5), and for the 70B model (8192 wide, 64 heads)
its grouped-query factor (8).

The cache folder may be one volume shared by several containers (each of them PID 1, on its own hostname):

- the cached file's name holds a key of the model (path, size, time) and of the converter (the sha256 of the
  script as the image ships it, patch applied, of its ``gguf`` package and of the settings above), so a
  changed model or a new converter converts again;
- one server converts at a time (a lock file beside the result); one that finds the lock taken waits for the
  result. Each writes under its own temporary name (hostname, PID and a random token, created exclusively),
  checks the result and renames it into place, so a stopped conversion leaves nothing that looks finished;
- a finished file is checked before it is used (a GGUF header that parses, and as long as it says); one that
  is not is removed and converted again;
- `stop_on_signals`: SIGTERM or SIGINT while the server starts stops the converter, removes its partial file
  and exits.

Standard library only: the converter runs as a child process.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
import secrets
import signal
import socket
import struct
import subprocess  # not core.proc: this file is copied to other machines and imports no llamawheel
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import gpu_layers

GGJT_MAGIC = b"tjgg"
"""The uint32 0x67676a74 ('ggjt') as it lies in a little-endian file."""
CONVERTER_DIR = Path(__file__).resolve().parent / "converter"
"""Where the image puts ``convert_llama_ggml_to_gguf.py`` and ``gguf/``."""
CONVERTER_SCRIPT = "convert_llama_ggml_to_gguf.py"
LLAMA2_CONTEXT = 4096
LLAMA2_EPS = "1e-5"
LLAMA2_70B_GQA = 8
PROGRESS_SECONDS = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ConversionError(Exception):
    """The model cannot be converted here; the message says what to do."""


@dataclass(frozen=True)
class GgmlHeader:
    version: int
    n_vocab: int
    n_embd: int
    n_mult: int
    n_head: int
    n_layer: int
    n_rot: int
    ftype: int

    @property
    def gqa(self) -> int:
        """Llama 2 70B (8192 wide, 64 heads) shares each key/value head among 8 query heads; the rest do not."""
        return LLAMA2_70B_GQA if (self.n_embd, self.n_head) == (8192, 64) else 1

    def describe(self) -> str:
        return (f"GGML v{self.version} (ggjt), {self.n_layer} layers, {self.n_embd} wide, {self.n_head} heads, "
                f"{self.n_vocab} tokens")


def read_header(path: Path) -> GgmlHeader | None:
    """The GGML ``ggjt`` header of ``path``; None when the file is something else (GGUF, a text file)."""
    try:
        with path.open("rb") as f:
            head = f.read(8 + 7 * 4)
    except OSError:
        return None
    if len(head) < 36 or head[:4] != GGJT_MAGIC:
        return None
    version, *hparams = struct.unpack("<8I", head[4:36])
    return GgmlHeader(version, *hparams)


def model_key(model: Path) -> str:
    """12 hex digits that change with ``model``'s path, size or modification time."""
    st = model.stat()
    return hashlib.sha256(f"{model.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]


def converter_key(converter_dir: Path) -> str:
    """12 hex digits of the sha256 of what converts: the converter script as the image ships it (llamawheel's
    patch applied), the ``gguf`` package beside it, and the settings this module gives it."""
    digest = hashlib.sha256(f"context {LLAMA2_CONTEXT}, eps {LLAMA2_EPS}, 70B gqa {LLAMA2_70B_GQA}\0".encode())
    script = converter_dir / CONVERTER_SCRIPT
    for path in [script, *sorted((converter_dir / "gguf").rglob("*.py"))]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConversionError(f"llama.cpp's GGML converter {path} cannot be read ({exc.strerror}): the image"
                                  " is incomplete; rebuild it (llamawheel image build)") from None
        digest.update(f"{path.relative_to(converter_dir)}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:12]


def converted_name(model: Path, converter_dir: Path = CONVERTER_DIR) -> str:
    """The cache file for ``model``: its name, its key and the converter's key (``llama-2-7b-chat.<model>-
    <converter>.gguf``), so a changed model or a changed converter converts again."""
    return f"{model.stem}.{model_key(model)}-{converter_key(converter_dir)}.gguf"


def check_gguf(path: Path) -> str | None:
    """Why ``path`` cannot be used as a finished conversion; None when it can: a GGUF header that parses (with
    gpu_layers' bounded reader), at least one tensor, and the file as long as the header says."""
    try:
        header = gpu_layers.read_gguf_header(path)
    except gpu_layers.GgufError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not header.tensors:
        return f"{path}: the GGUF header lists no tensors"
    return None


def converter_command(model: Path, header: GgmlHeader, output: Path, converter_dir: Path) -> list[str]:
    cmd = [sys.executable, str(converter_dir / CONVERTER_SCRIPT), "--input", str(model),
           "--output", str(output), "--context-length", str(LLAMA2_CONTEXT), "--eps", LLAMA2_EPS]
    if header.gqa != 1:
        cmd += ["--gqa", str(header.gqa)]
    return cmd


def on_volume(folder: Path) -> bool:
    """Whether ``folder`` lies on another file system than the container's root: a mounted volume, which
    outlives the container (its writable layer does not)."""
    return folder.stat().st_dev != Path("/").stat().st_dev


def ensure_gguf(model: Path, cache_dir: Path, *, converter_dir: Path = CONVERTER_DIR,
                say: Callable[[str], None] = print, need_volume: bool = True) -> Path:
    """The GGUF form of the GGML file ``model`` in ``cache_dir``: converted now, or found from an earlier start
    (or made by another server sharing the folder meanwhile). ``need_volume``: refuse a cache folder that is not
    a mounted volume (in a container, a conversion as big as the model would be lost with the container)."""
    header = read_header(model)
    if header is None:
        raise ConversionError(f"{model} is not a GGML ggjt file")
    if header.version != 3:
        raise ConversionError(f"{model} is GGML ggjt v{header.version}: only v3 files (what llama-gpt downloads) "
                              "are converted; download the model as GGUF instead")
    final = cache_dir / converted_name(model, converter_dir)
    if final.is_file() and check_gguf(final) is None:
        say(f"{model} is {header.describe()}: using its GGUF conversion {final} (made on an earlier start)")
        return final
    writable = cache_dir.is_dir() and os.access(cache_dir, os.W_OK | os.X_OK)
    problem = ("does not exist" if not cache_dir.is_dir() else
               f"is not writable by this server's user (uid {os.getuid()})" if not writable
               else "is not a mounted volume (the conversion would be lost with the container)"
               if need_volume and not on_volume(cache_dir) else "")
    if problem:
        raise ConversionError(
            f"{model} is {header.describe()}, an old format llama.cpp no longer reads; it is converted once to "
            f"GGUF into {cache_dir} (MODEL_CACHE), which {problem}: mount a writable volume there "
            f"(-v llama-cache:{cache_dir}), or convert the model yourself and mount the .gguf"
        )
    with _conversion_lock(final, say) as locked:
        if final.is_file():
            unusable = check_gguf(final)
            if unusable is None:
                say(f"{model} is {header.describe()}: using its GGUF conversion {final} (made by another server"
                    " while this one waited)")
                return final
            say(f"the cached conversion {final} is not usable ({unusable}): removing it and converting again")
            final.unlink(missing_ok=True)
        if locked:
            for left in final.parent.glob(glob.escape(f".{final.name}.partial-") + "*"):
                say(f"removing {left.name}, left by a conversion that was stopped (no server is writing it now)")
                left.unlink(missing_ok=True)
        for other in sorted(final.parent.glob(glob.escape(f"{model.stem}.{model_key(model)}") + "*.gguf")):
            if other != final:
                say(f"{other} is a conversion of {model} by another converter (an older image?): it is not used;"
                    " delete it once no server of that version shares this cache")
        _convert(model, header, final, converter_dir, say)
    return final


def _convert(model: Path, header: GgmlHeader, final: Path, converter_dir: Path, say: Callable[[str], None]) -> None:
    """Run the converter into a new partial file, check its output and rename it to ``final``."""
    size = model.stat().st_size
    say(f"{model} is {header.describe()}: converting it once to GGUF as {final} (Llama 2 settings: context "
        f"{LLAMA2_CONTEXT}, RMS-norm eps {LLAMA2_EPS}" + (f", grouped-query factor {header.gqa}" if header.gqa != 1
                                                           else "") + ")")
    started = time.monotonic()
    with _RUNNING.lock:  # a stop signal from now on removes the partial file
        partial = _new_partial(final)
        _RUNNING.model, _RUNNING.partial = model, partial
    cmd = converter_command(model, header, partial, converter_dir)
    env = {**os.environ, "PYTHONPATH": str(converter_dir)}
    try:
        with _RUNNING.lock:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            _RUNNING.proc = proc
        with proc:
            try:
                tail = _follow(proc, partial, size, started, say)
            except BaseException:  # KeyboardInterrupt without stop_on_signals: do not wait for the converter
                proc.kill()
                raise
        if proc.returncode != 0:
            raise ConversionError(f"converting {model} failed (exit {proc.returncode}):\n" + "\n".join(tail))
        unusable = check_gguf(partial)
        if unusable is not None:
            raise ConversionError(f"converting {model} wrote no usable GGUF file ({unusable}):\n" + "\n".join(tail))
        with _RUNNING.lock:
            os.replace(partial, final)
            _RUNNING.partial = None
    finally:
        with _RUNNING.lock:
            _RUNNING.model = _RUNNING.partial = _RUNNING.proc = None
        partial.unlink(missing_ok=True)
    say(f"converted {model} in {time.monotonic() - started:.0f} s: {final} ({final.stat().st_size / 1e6:.0f} MB)")


def _new_partial(final: Path) -> Path:
    """A new, empty file beside ``final`` whose name no other process uses, even one in another container
    sharing the folder (where every server is PID 1): the hostname, the PID and a random token, created
    exclusively."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "host"
    while True:
        partial = final.with_name(f".{final.name}.partial-{host}-{os.getpid()}-{secrets.token_hex(6)}")
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            continue
        return partial


@contextlib.contextmanager
def _conversion_lock(final: Path, say: Callable[[str], None]) -> Iterator[bool]:
    """Hold the lock on converting to ``final`` (an flock on ``.<final>.lock`` beside it, which every container
    sharing the volume sees), waiting while another server holds it; the lock file is removed on leaving. Yields
    False when the file system has no locks: then two servers may both convert, and each renames its own
    complete result into place."""
    lock = final.with_name(f".{final.name}.lock")
    fd = _lock(lock, final, say)
    if fd is None:
        yield False
        return
    with _RUNNING.lock:
        _RUNNING.lock_file = lock
    try:
        yield True
    finally:
        with _RUNNING.lock:
            _RUNNING.lock_file = None
            lock.unlink(missing_ok=True)  # before the lock goes: a server waiting on this file then tries anew
            os.close(fd)


def _lock(lock: Path, final: Path, say: Callable[[str], None]) -> int | None:
    """An open, flock-ed descriptor of ``lock`` (the file that is there now, not one its last holder removed);
    None when the file system has no locks."""
    started = last = time.monotonic()
    waiting = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
        except OSError as exc:
            os.close(fd)
            say(f"cannot lock {lock} ({exc.strerror}): converting without a lock (if another server converts the"
                " same model now, each writes its own complete file and the last one is kept)")
            return None
        else:
            try:
                if os.path.samestat(os.fstat(fd), os.stat(lock)):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder removed it as we locked it: lock the next one
            continue
        now = time.monotonic()
        if not waiting:
            waiting = True
            say(f"another server is converting the same model to {final}: waiting for its result")
        elif now - last >= PROGRESS_SECONDS:
            last = now
            written = sum(_size(p) for p in final.parent.glob(glob.escape(f".{final.name}.partial-") + "*"))
            say(f"waiting for the other server's conversion: {written / 1e6:.0f} MB written, {now - started:.0f} s")
        time.sleep(0.5)


def _size(path: Path) -> int:
    """``path``'s size; 0 when it is gone (a partial file renamed or removed meanwhile)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class _Running:
    """The conversion running now, for a stop signal's handler (which may run in another thread)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.model: Path | None = None
        self.partial: Path | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.lock_file: Path | None = None
        """The conversion lock this process holds: removed on a stop, as on a normal end."""


_RUNNING = _Running()


def _say_on_stderr(line: str) -> None:
    print(f"llamawheel: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_on_signals(say: Callable[[str], None] = _say_on_stderr) -> Iterator[None]:
    """While the server starts (converting a model, loading it), SIGTERM or SIGINT stops it at once: the
    converter is killed, its partial file removed, and the process exits with 128 + the signal's number (143
    for SIGTERM) after saying why. A container's entry point is PID 1, and the kernel gives PID 1 no default
    action for SIGTERM: without a handler, ``docker stop`` waits out its timeout and kills the container.

    A thread acts on the signal, so it works while the main thread is inside a C call (llama.cpp loading a
    model). Enter it in the main thread; leaving it puts back the handlers it found (leave it before the web
    server starts: uvicorn installs its own to shut down gracefully)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    watcher = threading.Thread(target=_watch, args=(read_fd, say), name="llamawheel-stop", daemon=True)
    watcher.start()
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, _wake_only) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(old_wakeup)
        os.close(write_fd)  # the watcher reads the end of the pipe and returns
        watcher.join(timeout=5)
        os.close(read_fd)


def _wake_only(signum: int, frame: object) -> None:
    """The Python-level handler: the C-level one has already written the signal to the wakeup pipe, and the
    watcher thread acts on it."""


def _watch(read_fd: int, say: Callable[[str], None]) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum in STOP_SIGNALS:
                _stop(signal.Signals(signum), say)


def _stop(sig: signal.Signals, say: Callable[[str], None]) -> None:
    """Kill the converter, remove its partial file, say why, and exit 128 + ``sig``."""
    with _RUNNING.lock:  # the main thread renames a finished conversion into place under it
        if _RUNNING.proc is not None:
            _RUNNING.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                _RUNNING.proc.wait(timeout=5)
        if _RUNNING.partial is not None:
            _RUNNING.partial.unlink(missing_ok=True)
            say(f"stopped by {sig.name} while converting {_RUNNING.model}: the converter is stopped and its partial"
                " file removed; the next start converts it again")
        else:
            say(f"stopped by {sig.name} while the server was starting")
        if _RUNNING.lock_file is not None:
            _RUNNING.lock_file.unlink(missing_ok=True)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(128 + sig)


def _follow(proc: subprocess.Popen[str], partial: Path, size: int, started: float,
            say: Callable[[str], None]) -> list[str]:
    """Wait for the converter, saying every few seconds how much it has written; returns the last lines it
    printed (for an error)."""
    tail: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            del tail[:-30]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    last = started
    while proc.poll() is None:
        time.sleep(0.5)
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            last = now
            done = _size(partial)
            say(f"converting: {done / 1e6:.0f} of about {size / 1e6:.0f} MB written, {now - started:.0f} s")
    reader.join(timeout=5)
    return tail
