"""llama-gpt's own models are GGML v3 (``ggjt``) files, which llama.cpp no longer reads: convert one once to
GGUF, into a writable cache folder, with llama.cpp's own converter (``convert_llama_ggml_to_gguf.py`` from the
pinned sdist, shipped in the image beside its ``gguf`` package).

The converter's defaults are Llama 1's; llama-gpt's files are Llama 2 chat models, so the conversion sets
Llama 2's context length (4096) and RMS-norm epsilon (1e-5), and for the 70B model (8192 wide, 64 heads)
its grouped-query factor (8). The result is written under a temporary name and renamed when complete, so
a stopped conversion leaves nothing that looks finished; a restart finds the finished file and reuses it.

Standard library only: the converter runs as a child process.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GGJT_MAGIC = b"tjgg"
"""The uint32 0x67676a74 ('ggjt') as it lies in a little-endian file."""
CONVERTER_DIR = Path(__file__).resolve().parent / "converter"
"""Where the image puts ``convert_llama_ggml_to_gguf.py`` and ``gguf/``."""
LLAMA2_CONTEXT = 4096
LLAMA2_EPS = "1e-5"
PROGRESS_SECONDS = 10.0


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
        return 8 if (self.n_embd, self.n_head) == (8192, 64) else 1

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


def converted_name(model: Path) -> str:
    """The cache file for ``model``: its name plus a key of its size and time, so a changed file converts again."""
    st = model.stat()
    key = hashlib.sha256(f"{model.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{model.stem}.{key}.gguf"


def converter_command(model: Path, header: GgmlHeader, output: Path, converter_dir: Path) -> list[str]:
    cmd = [sys.executable, str(converter_dir / "convert_llama_ggml_to_gguf.py"), "--input", str(model),
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
    """The GGUF form of the GGML file ``model`` in ``cache_dir``: converted now, or found from an earlier start.
    ``need_volume``: refuse a cache folder that is not a mounted volume (in a container, a conversion as big
    as the model would be lost with the container)."""
    header = read_header(model)
    if header is None:
        raise ConversionError(f"{model} is not a GGML ggjt file")
    final = cache_dir / converted_name(model)
    if final.is_file():
        say(f"{model} is {header.describe()}: using its GGUF conversion {final} (made on an earlier start)")
        return final
    if header.version != 3:
        raise ConversionError(f"{model} is GGML ggjt v{header.version}: only v3 files (what llama-gpt downloads) "
                              "are converted; download the model as GGUF instead")
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
    partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
    size = model.stat().st_size
    say(f"{model} is {header.describe()}: converting it once to GGUF as {final} (Llama 2 settings: context "
        f"{LLAMA2_CONTEXT}, RMS-norm eps {LLAMA2_EPS}" + (f", grouped-query factor {header.gqa}" if header.gqa != 1
                                                           else "") + ")")
    started = time.monotonic()
    cmd = converter_command(model, header, partial, converter_dir)
    env = {**os.environ, "PYTHONPATH": str(converter_dir)}
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
            tail = _follow(proc, partial, size, started, say)
        if proc.returncode != 0:
            raise ConversionError(f"converting {model} failed (exit {proc.returncode}):\n" + "\n".join(tail))
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    say(f"converted {model} in {time.monotonic() - started:.0f} s: {final} ({final.stat().st_size / 1e6:.0f} MB)")
    return final


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
            done = partial.stat().st_size if partial.exists() else 0
            say(f"converting: {done / 1e6:.0f} of about {size / 1e6:.0f} MB written, {now - started:.0f} s")
    reader.join(timeout=5)
    return tail
