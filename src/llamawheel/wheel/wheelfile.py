"""Reading and writing wheel archives: their members, the ``.dist-info`` folder and a fresh RECORD. What a
wheel says about itself (file name, METADATA) is read by `distmeta`."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llamawheel.core import fileio
from llamawheel.core.errors import WheelError


@dataclass
class Entry:
    name: str
    data: bytes
    mode: int = 0o644


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
        raise WheelError(f"{path} is not a valid wheel (not a zip archive)") from None


def dist_info_dir(entries: list[Entry]) -> str:
    names = {e.name.split("/")[0] for e in entries if e.name.split("/")[0].endswith(".dist-info")}
    if len(names) != 1:
        raise WheelError(f"expected one .dist-info folder, found {sorted(names)}")
    return names.pop()


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
    with fileio.new_file(final, suffix=".whl") as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                                                  compresslevel=6) as zf:
        # dist-info last, as the wheel spec recommends
        for e in sorted(body, key=lambda e: (e.name.startswith(info), e.name)):
            zi = zipfile.ZipInfo(e.name, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = (0o100000 | e.mode) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, e.data)
