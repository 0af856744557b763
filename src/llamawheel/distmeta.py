"""What a wheel says about itself: its METADATA file (read without unpacking the wheel, which
matters for a 420 MB cuBLAS wheel), its normalized project name and the variant its local
version names."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from llamawheel.errors import PublishError


def normalize(name: str) -> str:
    """The PEP 503 form of a project name: ``llama_cpp_python`` -> ``llama-cpp-python``."""
    return str(canonicalize_name(name))


def variant_of(local: str | None, filename: str) -> str:
    """The index a wheel belongs to: its local version's first label (``cu130.sm90`` -> ``cu130``)."""
    if not local:
        raise PublishError(
            f"{filename} has no local version label (+cu130, +cpu): cannot tell which variant index it belongs to",
            "publish wheels that llamawheel built (llamawheel build 13 / cpu), whose version says what they are",
        )
    first = re.split(r"[._-]", local)[0].lower()
    if not re.fullmatch(r"[a-z0-9]+", first):
        raise PublishError(f"{filename}: local version label '{local}' does not start with a usable variant name")
    return first


@dataclass(frozen=True)
class WheelMetadata:
    """A wheel's name parts and its METADATA, as bytes (for the PEP 658 file) and parsed."""

    filename: str
    project: str
    """Normalized (PEP 503) project name."""
    version: str
    local: str | None
    platforms: tuple[str, ...]
    raw: bytes

    @property
    def message(self) -> Message:
        return BytesParser().parsebytes(self.raw)

    @property
    def requires_python(self) -> str | None:
        value = self.message.get("Requires-Python")
        return str(value).strip() if value else None

    @property
    def provides_extra(self) -> tuple[str, ...]:
        return tuple(normalize(str(e)) for e in self.message.get_all("Provides-Extra") or [])

    @property
    def requires_dist(self) -> tuple[str, ...]:
        return tuple(str(r) for r in self.message.get_all("Requires-Dist") or [])

    @property
    def variant(self) -> str:
        return variant_of(self.local, self.filename)


def read(wheel: Path) -> WheelMetadata:
    """Read ``wheel``'s name and METADATA; a bad file name or a name that disagrees with METADATA is refused."""
    try:
        name, version, _, tags = parse_wheel_filename(wheel.name)
    except InvalidWheelFilename as exc:
        raise PublishError(f"{wheel.name} is not a wheel file name ({exc})") from None
    project = str(name)
    try:
        with zipfile.ZipFile(wheel) as zf:
            candidates = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            own = [n for n in candidates if normalize(n.split("/")[0].rsplit("-", 1)[0]) == project]
            if len(own or candidates) != 1:
                raise PublishError(f"{wheel}: expected one .dist-info/METADATA, found {candidates or 'none'}")
            raw = zf.read((own or candidates)[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise PublishError(f"{wheel} cannot be read as a wheel: {exc}") from None
    meta = WheelMetadata(
        filename=wheel.name,
        project=project,
        version=str(version),
        local=version.local,
        platforms=tuple(sorted({t.platform for t in tags})),
        raw=raw,
    )
    inner = normalize(str(meta.message.get("Name", "")))
    if inner != project:
        raise PublishError(
            f"{wheel.name}: its METADATA names the project '{inner}', its file name says '{project}'",
            "pip refuses such a wheel; rebuild it, or rename the file to match its metadata",
        )
    return meta
