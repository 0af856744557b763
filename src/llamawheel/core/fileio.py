"""Files that are never seen half-written, their hashes, and the locks that keep two runs apart.

Everything llamawheel writes for others to read (wheels, manifests, index pages, archives, cache
entries) goes through here: made under a temporary name in the same folder and renamed into place
only when complete, so a reader sees the old content or the new one, never a part; a killed run
leaves at most a temporary file that the next run sweeps away.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_PREFIX = ".partial-"
"""Temporary files being written (what ``index check`` lists as orphans when a run was killed)."""
BLOCK = 1 << 20


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes, read in blocks (a cuBLAS wheel is 420 MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def locked(target: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``target``'s ``.lock`` sibling; another run waits for it (``on_wait`` is
    called once when it has to)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def new_file(final: Path, *, durable: bool = False, suffix: str = "", mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` to write; on success it replaces ``final`` (world-readable by
    default: a wheel, a page or an archive is for others to read; ``mode=0o600`` for a file holding a secret,
    which is never readable by others, not even while it is written). ``durable`` flushes it to disk first.

    On any error the temporary file is removed and ``final`` is left as it was.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        if durable:
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file(final: Path, data: bytes, *, durable: bool = False, mode: int = 0o644) -> None:
    """Write ``final`` so that a reader sees the old content or the new, never a part."""
    with new_file(final, durable=durable, mode=mode) as tmp:
        tmp.write_bytes(data)


class ChangedWhileCopying(Exception):
    """`copy_file` read other bytes than the sha256 it was given."""


def copy_file(source: Path, final: Path, sha256: str | None = None, *, durable: bool = False) -> str:
    """Copy ``source`` to ``final`` through a temporary file, hashing as it goes; returns the sha256.
    With ``sha256``, bytes that do not match are refused (`ChangedWhileCopying`) and ``final`` is untouched."""
    digest = hashlib.sha256()
    with new_file(final, durable=durable) as tmp, tmp.open("wb") as out, source.open("rb") as src:
        for block in iter(lambda: src.read(BLOCK), b""):
            digest.update(block)
            out.write(block)
        out.flush()
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ChangedWhileCopying(f"{source} changed while it was being copied")
    return digest.hexdigest()


def move_file(source: Path, final: Path, *, durable: bool = False) -> None:
    """Rename a complete file into place (same file system), world-readable, flushed first if ``durable``."""
    if durable:
        with source.open("rb") as fh:
            os.fsync(fh.fileno())
    os.chmod(source, 0o644)
    os.replace(source, final)


@contextmanager
def new_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success it replaces ``final``.

    Call it while holding `locked` on ``final``.

    On any error the temporary folder is removed and ``final`` is left as it was.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    # Callers hold `locked(final)`: leftovers of a run that was killed are nobody's now.
    for stale in final.parent.glob(f".incoming-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".incoming-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
            os.rename(final, trash / "x")
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only, from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
