"""What a wheel says about itself: its file name and its METADATA, read through `packaging` — the one
reader of both, used by every command (repair, verify, publish, image), with one error, `WheelError`.

METADATA is read without unpacking the wheel (which matters for a 420 MB cuBLAS wheel).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import BuildTag, InvalidWheelFilename, NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from llamawheel.core.errors import WheelError
from llamawheel.recipe.variant import index_name

_METADATA = re.compile(r"[^/]+\.dist-info/METADATA")


def normalize(name: str) -> str:
    """The PEP 503 form of a project name: ``llama_cpp_python`` -> ``llama-cpp-python``."""
    return str(canonicalize_name(name))


@dataclass(frozen=True)
class WheelName:
    """A wheel file name's parts, as written (``llama_cpp_python``, ``0.3.36+cu130``, ``py3``, ``none``,
    ``manylinux_2_35_x86_64``)."""

    distribution: str
    version: str
    python: str
    abi: str
    platform: str
    build: str = ""

    @classmethod
    def parse(cls, filename: str) -> WheelName:
        try:
            parse_wheel_filename(filename)
        except InvalidWheelFilename as exc:
            raise WheelError(f"{filename} is not a wheel file name ({exc})") from None
        parts = filename.removesuffix(".whl").split("-")
        build = parts.pop(2) if len(parts) == 6 else ""
        distribution, version, python, abi, platform = parts
        return cls(distribution, version, python, abi, platform, build)

    @property
    def filename(self) -> str:
        build = f"-{self.build}" if self.build else ""
        return f"{self.distribution}-{self.version}{build}-{self.python}-{self.abi}-{self.platform}.whl"

    def with_(self, *, version: str | None = None, platform: str | None = None) -> WheelName:
        return WheelName(self.distribution, version or self.version, self.python, self.abi, platform or self.platform,
                         self.build)


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

    def get_all(self, key: str) -> list[str]:
        """Every value of one METADATA field (``Requires-Dist``), as written."""
        return [str(v) for v in self.message.get_all(key) or []]

    @property
    def metadata_version(self) -> str:
        """The ``Version:`` METADATA states (the file name's may differ in a broken wheel)."""
        return str(self.message.get("Version", "?"))

    @property
    def requires_python(self) -> str | None:
        value = self.message.get("Requires-Python")
        return str(value).strip() if value else None

    @property
    def provides_extra(self) -> tuple[str, ...]:
        return tuple(normalize(e) for e in self.get_all("Provides-Extra"))

    @property
    def requires_dist(self) -> tuple[str, ...]:
        return tuple(self.get_all("Requires-Dist"))

    @property
    def variant(self) -> str:
        """The index the wheel belongs to: its local version's first label (``cu130.sm90`` -> ``cu130``);
        empty when it has no usable one."""
        return index_name(self.local or "")


def _pick(filename: str, project: str, names: Iterable[str]) -> str:
    candidates = [n for n in names if _METADATA.fullmatch(n)]
    own = [n for n in candidates if normalize(n.split("/")[0].rsplit("-", 1)[0]) == project]
    if len(own or candidates) != 1:
        raise WheelError(f"{filename}: expected one .dist-info/METADATA, found {candidates or 'none'}")
    return (own or candidates)[0]


def from_files(filename: str, files: dict[str, bytes]) -> WheelMetadata:
    """The metadata of a wheel named ``filename`` whose members (name -> bytes) are already in memory."""
    return _metadata(filename, lambda project: files[_pick(filename, project, files)])


def read(wheel: Path) -> WheelMetadata:
    """Read ``wheel``'s name and METADATA; a bad file name or a name that disagrees with METADATA is refused."""
    def raw(project: str) -> bytes:
        try:
            with zipfile.ZipFile(wheel) as zf:
                return zf.read(_pick(wheel.name, project, zf.namelist()))
        except (zipfile.BadZipFile, OSError) as exc:
            raise WheelError(f"{wheel} cannot be read as a wheel: {exc}") from None

    return _metadata(wheel.name, raw)


def _metadata(filename: str, raw: Callable[[str], bytes]) -> WheelMetadata:
    """The metadata of the wheel ``filename``, its METADATA bytes from ``raw(project)``; checked to name the
    project the file name does."""
    name, version, _, tags = _parse_name(filename)
    meta = WheelMetadata(filename, str(name), str(version), version.local, tuple(sorted({t.platform for t in tags})),
                         raw(str(name)))
    inner = normalize(str(meta.message.get("Name", "")))
    if inner != meta.project:
        raise WheelError(
            f"{meta.filename}: its METADATA names the project '{inner}', its file name says '{meta.project}'",
            "pip refuses such a wheel; rebuild it, or rename the file to match its metadata",
        )
    return meta


def _parse_name(filename: str) -> tuple[NormalizedName, Version, BuildTag, frozenset[Tag]]:
    try:
        return parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise WheelError(f"{filename} is not a wheel file name ({exc})") from None
