"""The version shims: tar extraction that stays inside its folder (with and without tarfile's data filter)."""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from llamawheel.core import compat

Extract = Callable[[tarfile.TarFile, Path], None]
BOTH = pytest.mark.parametrize("extract", [compat.extract_all, compat.extract_all_checked],
                               ids=["extract_all", "fallback"])


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _extract(extract: Extract, archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        extract(tar, dest)


def test_tomllib_reads_toml() -> None:
    assert compat.tomllib.loads('a = 1\n[b]\nc = "d"\n') == {"a": 1, "b": {"c": "d"}}


@BOTH
def test_a_normal_archive_extracts(extract: Extract, tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ok.tar.gz", _file("pkg-1.0/pyproject.toml", b"[project]\n"),
                   _file("pkg-1.0/bin/run", b"#!/bin/sh\n", 0o755), _link("pkg-1.0/lib/libz.so", "libz.so.1"),
                   _file("pkg-1.0/lib/libz.so.1", b"ELF"), _link("pkg-1.0/up", "../pkg-1.0/bin/run"))
    dest = tmp_path / "out"
    dest.mkdir()
    _extract(extract, archive, dest)
    assert (dest / "pkg-1.0" / "pyproject.toml").read_bytes() == b"[project]\n"
    assert os.access(dest / "pkg-1.0" / "bin" / "run", os.X_OK)
    assert os.readlink(dest / "pkg-1.0" / "lib" / "libz.so") == "libz.so.1"
    assert (dest / "pkg-1.0" / "lib" / "libz.so").read_bytes() == b"ELF"
    assert (dest / "pkg-1.0" / "up").read_bytes() == b"#!/bin/sh\n"  # a link with '..' that stays inside


@BOTH
@pytest.mark.parametrize(
    "member",
    [
        _file("../evil", b"owned"),
        _file("pkg/../../evil", b"owned"),
        _link("pkg/escape", "../../evil"),
        _link("pkg/passwd", "/etc/passwd"),
        _link("pkg/hard", "../evil", tarfile.LNKTYPE),
    ],
    ids=["dotdot", "dotdot-inside", "symlink-out", "absolute-symlink", "hardlink-out"],
)
def test_escaping_members_are_refused(extract: Extract, member: tuple[tarfile.TarInfo, bytes | None],
                                      tmp_path: Path) -> None:
    archive = _tar(tmp_path / "bad.tar.gz", _file("pkg/ok", b"fine"), member)
    dest = tmp_path / "a" / "out"
    dest.mkdir(parents=True)
    with pytest.raises(tarfile.TarError):
        _extract(extract, archive, dest)
    assert not (tmp_path / "a" / "evil").exists()
    assert not (dest / member[0].name).is_symlink()


def test_fallback_refuses_an_absolute_path(tmp_path: Path) -> None:
    target = tmp_path / "abs" / "evil"
    archive = _tar(tmp_path / "abs.tar.gz", _file(str(target), b"owned"))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(compat.UnsafeArchiveMember, match="is an absolute path"):
        _extract(compat.extract_all_checked, archive, dest)
    assert not target.exists()
    assert not list(dest.rglob("*"))


def test_fallback_refuses_dotdot(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "dotdot.tar.gz", _file("../evil", b"owned"))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(compat.UnsafeArchiveMember, match=r"'\.\./evil' contains '\.\.'"):
        _extract(compat.extract_all_checked, archive, dest)
    assert not (tmp_path / "evil").exists()


def test_fallback_refuses_writing_through_a_link_extracted_before(tmp_path: Path) -> None:
    """The link itself stays inside, but after it a member's path leads outside: checked member by member."""
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _tar(tmp_path / "chain.tar.gz", _link("a/b/up", "../.."), _link("a/b/up2", "up/.."),
                   _file("a/b/up2/outside/evil", b"owned"))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(compat.UnsafeArchiveMember):
        _extract(compat.extract_all_checked, archive, dest)
    assert not (outside / "evil").exists()


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_fallback_refuses_devices(kind: bytes, tmp_path: Path) -> None:
    info = tarfile.TarInfo("pkg/dev")
    info.type = kind
    archive = _tar(tmp_path / "dev.tar.gz", (info, None))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(compat.UnsafeArchiveMember, match="device file or fifo"):
        _extract(compat.extract_all_checked, archive, dest)
    assert not (dest / "pkg" / "dev").exists()


def test_fallback_drops_setuid_and_group_write(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "mode.tar.gz", _file("pkg/tool", b"#!/bin/sh\n", 0o4777), _file("pkg/data", b"", 0o444))
    dest = tmp_path / "out"
    dest.mkdir()
    _extract(compat.extract_all_checked, archive, dest)
    assert stat.S_IMODE((dest / "pkg" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "pkg" / "data").stat().st_mode) == 0o644


def test_extract_all_uses_the_data_filter_where_tarfile_has_it(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(tarfile, "data_filter"):
        pytest.skip(f"Python {sys.version.split()[0]} has no tarfile data filter: extract_all is the fallback")
    monkeypatch.setattr(compat, "extract_all_checked", lambda tar, dest: pytest.fail("fallback used"))
    archive = _tar(tmp_path / "bad.tar.gz", _file("../evil", b"owned"))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(tarfile.FilterError):
        _extract(compat.extract_all, archive, dest)


def test_unpacking_an_sdist_goes_through_it(tmp_path: Path) -> None:
    from llamawheel.building import sdist

    good = _tar(tmp_path / "pkg-1.0.tar.gz", _file("pkg-1.0/pyproject.toml", b"[project]\n"))
    assert (sdist.unpack(good, tmp_path / "src") / "pyproject.toml").read_bytes() == b"[project]\n"
    bad = _tar(tmp_path / "bad-1.0.tar.gz", _file("bad-1.0/ok"), _link("bad-1.0/escape", "../../evil"))
    with pytest.raises(tarfile.TarError):
        sdist.unpack(bad, tmp_path / "src")
