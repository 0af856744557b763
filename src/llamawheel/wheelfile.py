"""Reading and writing wheel archives: entries, metadata, RECORD, file names."""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from llamawheel.errors import RepairError


@dataclass
class Entry:
    name: str
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class WheelName:
    distribution: str
    version: str
    python: str
    abi: str
    platform: str

    @classmethod
    def parse(cls, filename: str) -> WheelName:
        parts = filename.removesuffix(".whl").split("-")
        if len(parts) == 6:  # build tag
            parts = [parts[0], parts[1], parts[3], parts[4], parts[5]]
        if len(parts) != 5:
            raise RepairError(f"{filename} is not a wheel file name")
        return cls(*parts)

    @property
    def filename(self) -> str:
        return f"{self.distribution}-{self.version}-{self.python}-{self.abi}-{self.platform}.whl"


def read_entries(path: Path) -> list[Entry]:
    try:
        with zipfile.ZipFile(path) as zf:
            out = []
            for info in zf.infolist():
                if info.is_dir():
                    continue
                mode = (info.external_attr >> 16) & 0o777
                out.append(Entry(info.filename, zf.read(info), mode or 0o644))
            return out
    except zipfile.BadZipFile:
        raise RepairError(f"{path} is not a valid wheel (not a zip archive)") from None


def dist_info_dir(entries: list[Entry]) -> str:
    names = {e.name.split("/")[0] for e in entries if e.name.split("/")[0].endswith(".dist-info")}
    if len(names) != 1:
        raise RepairError(f"expected one .dist-info folder, found {sorted(names)}")
    return names.pop()


def metadata(entries: list[Entry]) -> dict[str, list[str]]:
    info = dist_info_dir(entries)
    raw = next(e for e in entries if e.name == f"{info}/METADATA").data.decode()
    msg = Parser().parsestr(raw)
    out: dict[str, list[str]] = {}
    for key, value in msg.items():
        out.setdefault(key, []).append(value)
    return out


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def write_wheel(entries: list[Entry], final: Path) -> None:
    """Write ``entries`` plus a fresh RECORD to ``final`` atomically."""
    info = dist_info_dir(entries)
    record_name = f"{info}/RECORD"
    body = [e for e in entries if e.name != record_name]
    lines = [f"{e.name},{_record_hash(e.data)},{len(e.data)}" for e in body] + [f"{record_name},,"]
    body.append(Entry(record_name, ("\n".join(lines) + "\n").encode()))
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".whl", dir=final.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            # dist-info last, as the wheel spec recommends
            for e in sorted(body, key=lambda e: (e.name.startswith(info), e.name)):
                zi = zipfile.ZipInfo(e.name, date_time=(2020, 1, 1, 0, 0, 0))
                zi.external_attr = (0o100000 | e.mode) << 16
                zi.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(zi, e.data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a wheel is for others to read
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
