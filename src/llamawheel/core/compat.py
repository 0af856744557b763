"""What differs between the Python versions llamawheel runs on (3.10 and up), hidden in one place.

- ``tomllib``: the standard library's from 3.11, the ``tomli`` backport before.
- ``extract_all``: tarfile's ``data`` filter (PEP 706) where this Python has it (3.12, 3.11.4+, 3.10.12+);
  on older ones the same refusals, checked here.
"""

from __future__ import annotations

import copy
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["UnsafeArchiveMember", "extract_all", "extract_all_checked", "tomllib"]


class UnsafeArchiveMember(tarfile.TarError):
    """A member ``extract_all_checked`` refuses: it would be written outside the destination, or is a device."""


def extract_all(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract every member of ``tar`` under ``dest``, refusing any that would write elsewhere (raises a
    ``tarfile.TarError``: tarfile's own ``FilterError`` where the data filter exists, else UnsafeArchiveMember)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
    else:  # pragma: no cover - Python 3.10 before 3.10.12
        extract_all_checked(tar, dest)


def extract_all_checked(tar: tarfile.TarFile, dest: Path) -> None:
    """``extract_all`` for a Python without tarfile's filters: refuses absolute names, names containing
    ``..``, links (symbolic or hard) that point outside ``dest`` or to an absolute path, and device files and
    fifos; drops setuid/setgid bits, group and other write permission and the archive's owners.

    Each member is checked just before it is written (tarfile extracts lazily from the generator), so a
    symbolic link extracted earlier cannot carry a later member outside ``dest``."""
    root = os.path.realpath(dest)
    options: dict[str, Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    tar.extractall(dest, members=_checked(tar, root), **options)


def _checked(tar: tarfile.TarFile, root: str) -> Iterator[tarfile.TarInfo]:
    for member in tar.getmembers():
        yield _check(member, root)


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), root]) == root


def _check(member: tarfile.TarInfo, root: str) -> tarfile.TarInfo:
    name = member.name
    if name.startswith(("/", os.sep)) or os.path.isabs(name):
        raise UnsafeArchiveMember(f"{name!r} is an absolute path: refusing to extract it")
    if ".." in PurePosixPath(name).parts or ".." in Path(name).parts:
        raise UnsafeArchiveMember(f"{name!r} contains '..': refusing to extract it")
    if not _inside(os.path.join(root, name), root):
        raise UnsafeArchiveMember(f"{name!r} would be written outside {root} (through a link): refusing it")
    if member.isdev():
        raise UnsafeArchiveMember(f"{name!r} is a device file or fifo: refusing to extract it")
    if member.issym() or member.islnk():
        link = member.linkname
        base = os.path.join(root, os.path.dirname(name)) if member.issym() else root
        if os.path.isabs(link) or not _inside(os.path.join(base, link), root):
            raise UnsafeArchiveMember(f"{name!r} links to {link!r}, outside {root}: refusing to extract it")
    safe = copy.copy(member)
    mode = member.mode & 0o755  # no setuid, setgid or sticky bit, no group or other write
    if member.isdir():
        mode |= 0o700
    elif member.isreg() or member.islnk():
        mode = (mode if mode & 0o100 else mode & ~0o111) | 0o600
    safe.mode = mode
    safe.uid, safe.gid, safe.uname, safe.gname = os.getuid(), os.getgid(), "", ""
    return safe
