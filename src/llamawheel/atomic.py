"""Atomic cache entries: made in a temporary sibling, renamed into place when complete."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``target``'s ``.lock`` sibling (waits for another run)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def write_file(final: Path, data: bytes) -> None:
    """Write ``final`` so that a reader sees the old content or the new, never a part."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}-", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
